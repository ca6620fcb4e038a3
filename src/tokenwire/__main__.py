from tokenwire.cli import main

raise SystemExit(main())
