// The two DOM helpers both demo pages use (board.js and the directory page).

/** A new <tag> element with a class and, if given, its text. */
export function element(tag, className, text) {
  const made = document.createElement(tag);
  made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

/** A <button type="button"> with a class, its text and what a click does. */
export function button(text, className, onclick) {
  const made = element("button", className, text);
  made.type = "button";
  made.onclick = onclick;
  return made;
}
