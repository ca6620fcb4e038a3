/**
 * Model output as Markdown, sanitised: `marked` turns it into HTML and
 * DOMPurify keeps only inert markup, so a reply can never inject a script,
 * an event handler, a form or a frame. Links open in a new tab without an
 * opener or a Referer.
 */
import DOMPurify from 'dompurify';
import { Marked } from 'marked';

const marked = new Marked({ gfm: true, breaks: true, async: false });

const purify = DOMPurify(window);
purify.addHook('afterSanitizeAttributes', (node) => {
  if (node instanceof HTMLAnchorElement && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

const FORBID_TAGS = ['style', 'form', 'input', 'button', 'textarea', 'select', 'iframe', 'object', 'embed'];
// No styles (a reply cannot cover the page), no classes or ids (it cannot
// borrow the page's look or clobber its globals).
const FORBID_ATTR = ['style', 'class', 'id'];

/** Elements a cursor must not go inside (void or not shown as text). */
const NO_TEXT = new Set(['BR', 'HR', 'IMG', 'TABLE', 'THEAD', 'TBODY', 'TR', 'UL', 'OL']);

/**
 * Sanitised HTML for `text`. With `cursor`, a blinking block is placed at the
 * end of the last line of text (inside the last paragraph, list item or code
 * block) rather than on a line of its own.
 */
export function renderMarkdown(text: string, cursor = false): string {
  const html = marked.parse(text) as string;
  const fragment = purify.sanitize(html, {
    USE_PROFILES: { html: true },
    FORBID_TAGS,
    FORBID_ATTR,
    RETURN_DOM_FRAGMENT: true,
  });
  if (cursor) {
    let target: Element | DocumentFragment = fragment;
    while (target.lastElementChild && !NO_TEXT.has(target.lastElementChild.tagName)) {
      target = target.lastElementChild;
    }
    const span = document.createElement('span');
    span.className = 'cursor';
    span.setAttribute('aria-hidden', 'true');
    span.textContent = '▊';
    target.appendChild(span);
  }
  const holder = document.createElement('div');
  holder.appendChild(fragment);
  return holder.innerHTML;
}
