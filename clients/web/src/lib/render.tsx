// Markdown (lib/markdown.ts) to React elements: text is always a text node, never HTML.
import { type ReactNode, useState } from "react";

import { type Block, blocksWithPills, type Inline, parse, type Pill, pillUser } from "./markdown";

function Spoiler({ children }: { children: ReactNode }) {
  const [shown, setShown] = useState(false);
  return (
    <span
      className={shown ? "spoiler shown" : "spoiler"}
      role="button"
      tabIndex={0}
      aria-label={shown ? undefined : "Spoiler, press to reveal"}
      onClick={() => setShown(true)}
      onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && setShown(true)}
    >
      {children}
    </span>
  );
}

let me = "";

function inline(nodes: Inline[]): ReactNode[] {
  return nodes.map((n, i) => {
    switch (n.t) {
      case "text":
        return n.v;
      case "br":
        return <br key={i} />;
      case "code":
        return <code key={i}>{n.v}</code>;
      case "bold":
        return <strong key={i}>{inline(n.c)}</strong>;
      case "italic":
        return <em key={i}>{inline(n.c)}</em>;
      case "strike":
        return <del key={i}>{inline(n.c)}</del>;
      case "spoiler":
        return <Spoiler key={i}>{inline(n.c)}</Spoiler>;
      case "pill": {
        const user = pillUser({ text: n.v, href: n.href });
        return (
          <span key={i} className={`mention${user && user === me ? " me" : ""}`} title={user}>
            {n.v}
          </span>
        );
      }
    }
  });
}

function blocks(bs: Block[]): ReactNode[] {
  return bs.map((b, i) => {
    switch (b.t) {
      case "para":
        return <div key={i}>{inline(b.c)}</div>;
      case "quote":
        return <blockquote key={i}>{blocks(b.c)}</blockquote>;
      case "codeblock":
        return (
          <pre key={i}>
            <code>{b.v}</code>
          </pre>
        );
    }
  });
}

/**
 * A message body (the Markdown source every client puts in `body`) as elements; `pills`
 * (from formatted_body's matrix.to links) show as mentions, the user's own highlighted.
 */
export function Markdown({ source, pills = [], self = "" }: { source: string; pills?: Pill[]; self?: string }) {
  me = self;
  return <>{blocks(blocksWithPills(parse(source), pills))}</>;
}
