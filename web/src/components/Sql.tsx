// The exact statement text, highlighted by highlight.js (core + the SQL grammar only, so the
// bundle stays small). highlight.js escapes the text it is given, so the HTML it returns is safe.
import hljs from "highlight.js/lib/core";
import sql from "highlight.js/lib/languages/sql";
import { useMemo } from "preact/hooks";

hljs.registerLanguage("sql", sql);

export function Sql({ text, label }: { text: string; label?: string }) {
  const html = useMemo(
    () => hljs.highlight(text, { language: "sql", ignoreIllegals: true }).value,
    [text],
  );
  return (
    <pre class="sql" aria-label={label ?? "SQL statement"} tabIndex={0}>
      <code class="hljs language-sql" dangerouslySetInnerHTML={{ __html: html }} />
    </pre>
  );
}

/** Shell commands and file operations are shown as they were typed, without SQL colours. */
export function Command({ text, protocol }: { text: string; protocol: string }) {
  if (protocol === "postgres" || protocol === "mysql") return <Sql text={text} />;
  return (
    <pre class="command" tabIndex={0} aria-label="Command">
      <code>{text}</code>
    </pre>
  );
}
