"""Connection authentication: only a properly signed, current token for the right audience gets in."""

from __future__ import annotations

import base64
import time
from typing import Any

import jwt
import orjson
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import SECRET, Client, Gateway, GatewayFactory


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 600, **extra}


async def _refused(gateway: Gateway, client: Client, token: str | None) -> Any:
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gateway.url, token)
    return client.connect_error


async def test_valid_token_connects_and_user_is_sub(gateway: Gateway, client_factory: Any) -> None:
    c = client_factory()
    await c.connect(gateway.url, gateway.token("carol"))
    ack = await c.call("chat:start", {"message": "hi", "userId": "carol"})
    assert ack["ok"] is True


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "not-a-jwt",
        jwt.encode(
            _claims(),
            "some-other-secret-long-enough-for-every-hmac-algorithm-0123456789",
            algorithm="HS256",
        ),
        jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode(_claims(sub=""), SECRET, algorithm="HS256"),
        jwt.encode(_claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256"),
        jwt.encode(_claims(), SECRET, algorithm="HS512"),  # not in JWT_ALGORITHMS
        _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(orjson.dumps(_claims())) + ".",
    ],
    ids=[
        "missing",
        "empty",
        "garbage",
        "wrong-key",
        "no-exp",
        "empty-sub",
        "not-yet-valid",
        "alg-not-allowed",
        "alg-none",
    ],
)
async def test_bad_token_is_refused_as_unauthorized(
    gateway: Gateway, client_factory: Any, token: str | None
) -> None:
    error = await _refused(gateway, client_factory(), token)
    assert error["message"] == "unauthorized"
    assert error["data"]["code"] == "UNAUTHORIZED"


async def test_expired_token_says_token_expired(gateway: Gateway, client_factory: Any) -> None:
    error = await _refused(gateway, client_factory(), gateway.token("alice", ttl_s=-60))
    assert error == {
        "message": "unauthorized",
        "data": {"code": "TOKEN_EXPIRED", "message": error["data"]["message"]},
    }


async def test_hs_rs_confusion_is_refused(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    """A token HMAC-signed with the RSA public key must not pass as RS256 or HS256."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    body = _b64(orjson.dumps(_claims()))
    import hashlib
    import hmac

    signature = _b64(hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    forged = f"{header}.{body}.{signature}"
    async with gateway_factory(jwt_algorithms="RS256,HS256") as gw:
        error = await _refused(gw, client_factory(), forged)
        assert error["data"]["code"] == "UNAUTHORIZED"


async def test_audience_and_issuer_are_checked(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(jwt_audience="tokenwire", jwt_issuer="https://id.example") as gw:
        wrong_aud = jwt.encode(
            _claims(aud="other", iss="https://id.example"), SECRET, algorithm="HS256"
        )
        wrong_iss = jwt.encode(
            _claims(aud="tokenwire", iss="https://evil.example"), SECRET, algorithm="HS256"
        )
        assert (await _refused(gw, client_factory(), wrong_aud))["data"]["code"] == "UNAUTHORIZED"
        assert (await _refused(gw, client_factory(), wrong_iss))["data"]["code"] == "UNAUTHORIZED"
        good = client_factory()
        await good.connect(gw.url, gw.token("alice"))  # issue() adds aud and iss
        assert good.sio.connected


async def test_jwks_rs256_tokens_are_verified(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    from tokenwire.testing import serve

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")

    async def jwks_app(scope: Any, _receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = orjson.dumps({"keys": [jwk]})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async with serve(jwks_app, lifespan="off") as jwks_url:
        async with gateway_factory(
            jwt_algorithms="RS256", jwt_jwks_url=f"{jwks_url}/jwks.json"
        ) as gw:
            token = jwt.encode(_claims(sub="dave"), key, algorithm="RS256", headers={"kid": "k1"})
            ok = client_factory()
            await ok.connect(gw.url, token)
            assert ok.sio.connected
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            forged = jwt.encode(
                _claims(sub="dave"), other, algorithm="RS256", headers={"kid": "k1"}
            )
            assert (await _refused(gw, client_factory(), forged))["data"]["code"] == "UNAUTHORIZED"
            unknown_kid = jwt.encode(
                _claims(sub="dave"), key, algorithm="RS256", headers={"kid": "nope"}
            )
            assert (await _refused(gw, client_factory(), unknown_kid))["data"][
                "code"
            ] == "UNAUTHORIZED"


async def test_without_auth_required_user_id_comes_from_payload(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(auth_required=False) as gw:
        c = client_factory()
        await c.connect(gw.url, None)
        missing = await c.call("chat:start", {"message": "hi"})
        assert missing["error"]["code"] == "VALIDATION_ERROR"
        ack = await c.call("chat:start", {"message": "hi", "userId": "guest-1"})
        assert ack["ok"] is True
        await c.wait_for("chat:end")
        _, total = await gw.services.repository.list_conversations("guest-1", limit=5, offset=0)
        assert total == 1


async def test_origin_outside_cors_is_refused(gateway: Gateway, client_factory: Any) -> None:
    bad = client_factory()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await bad.connect(gateway.url, gateway.token(), headers={"Origin": "http://evil.example"})
    good = client_factory()
    await good.connect(gateway.url, gateway.token(), headers={"Origin": "http://localhost:5173"})
    assert good.sio.connected
    own = client_factory()
    await own.connect(gateway.url, gateway.token(), headers={"Origin": gateway.url})
    assert own.sio.connected
