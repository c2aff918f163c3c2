import { describe, expect, it } from "vitest";

import {
  isPlain,
  mentionQuery,
  messageContent,
  parse,
  parseInline,
  pillsOf,
  plainText,
  roomPill,
  toHtml,
  userPill,
} from "./markdown";

const html = (s: string) => toHtml(parse(s));

describe("inline Markdown", () => {
  it("renders bold, italic, strike, code and spoilers", () => {
    expect(html("**bold**")).toBe("<strong>bold</strong>");
    expect(html("*it* and _it_")).toBe("<em>it</em> and <em>it</em>");
    expect(html("~~gone~~")).toBe("<del>gone</del>");
    expect(html("`x < y`")).toBe("<code>x &lt; y</code>");
    expect(html("||secret||")).toBe("<span data-mx-spoiler>secret</span>");
  });

  it("nests", () => {
    expect(html("**bold *and italic***")).toBe("<strong>bold <em>and italic</em></strong>");
    expect(html("||**loud** secret||")).toBe(
      "<span data-mx-spoiler><strong>loud</strong> secret</span>",
    );
  });

  it("leaves what is not closed, snake_case and escapes as typed", () => {
    expect(html("2 * 3 = 6")).toBe("2 * 3 = 6");
    expect(html("**open")).toBe("**open");
    expect(html("snake_case_name")).toBe("snake_case_name");
    expect(html("\\*not italic\\*")).toBe("*not italic*");
    expect(parseInline("****")).toEqual([{ t: "text", v: "****" }]);
  });

  it("does not format inside code", () => {
    expect(html("`**not bold**`")).toBe("<code>**not bold**</code>");
    expect(html("**a `b**` c**")).toBe("<strong>a <code>b**</code> c</strong>");
  });
});

describe("blocks", () => {
  it("quotes consecutive > lines", () => {
    expect(html("> one\n> **two**\nafter")).toBe(
      "<blockquote>one<br><strong>two</strong></blockquote><br>after",
    );
  });

  it("keeps code blocks verbatim and escaped", () => {
    expect(html("```rust\nfn a() -> *const u8 {}\n```")).toBe(
      '<pre><code class="language-rust">fn a() -&gt; *const u8 {}</code></pre>',
    );
    expect(html("```\nunclosed")).toBe("```<br>unclosed");
  });

  it("keeps line breaks", () => {
    expect(html("a\nb")).toBe("a<br>b");
  });
});

describe("safety", () => {
  it("escapes every text, so no markup typed by a user reaches the HTML", () => {
    expect(html('<img src=x onerror="alert(1)">')).toBe(
      "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;",
    );
    expect(html("**<script>alert(1)</script>**")).toBe(
      "<strong>&lt;script&gt;alert(1)&lt;/script&gt;</strong>",
    );
    expect(html("```\n\"><script>\n```")).toBe("<pre><code>&quot;&gt;&lt;script&gt;</code></pre>");
    expect(html("```\"><script>\n</script>\n```")).not.toMatch(/<script|<\/script/);
  });

  it("keeps a code block's language to word characters", () => {
    expect(html('```x"onload\ncode\n```')).not.toMatch(/<[^>]*onload/);
    expect(html("```c++\ncode\n```")).toBe('<pre><code class="language-c++">code</code></pre>');
  });
});

describe("message content", () => {
  it("sends plain text as a plain body", () => {
    expect(messageContent("hello there")).toEqual({ msgtype: "m.text", body: "hello there" });
    expect(isPlain(parse("a\nb"))).toBe(true);
  });

  it("sends Markdown with the HTML and the source as body", () => {
    expect(messageContent("hi **you**")).toEqual({
      msgtype: "m.text",
      body: "hi **you**",
      format: "org.matrix.custom.html",
      formatted_body: "hi <strong>you</strong>",
    });
  });
});

describe("mentions", () => {
  const alice = userPill("@alice:example.org", "Alice Liddell");
  const general = roomPill("!g:example.org", "general");

  it("sends a picked mention as a matrix.to pill, with the text kept in body", () => {
    expect(messageContent("hi @Alice Liddell, see #general", [alice, general])).toEqual({
      msgtype: "m.text",
      body: "hi @Alice Liddell, see #general",
      format: "org.matrix.custom.html",
      formatted_body:
        'hi <a href="https://matrix.to/#/@alice:example.org">@Alice Liddell</a>, see <a href="https://matrix.to/#/!g:example.org">#general</a>',
    });
  });

  it("ignores a pick whose text was deleted, and never pills inside code", () => {
    expect(messageContent("just text", [alice])).toEqual({ msgtype: "m.text", body: "just text" });
    expect(toHtml(parse("`@Alice Liddell` **@Alice Liddell**"))).toBe("<code>@Alice Liddell</code> <strong>@Alice Liddell</strong>");
    expect(messageContent("**@Alice Liddell**", [alice]).formatted_body).toBe(
      '<strong><a href="https://matrix.to/#/@alice:example.org">@Alice Liddell</a></strong>',
    );
  });

  it("reads the pills of a received formatted_body, escaped", () => {
    expect(pillsOf('x <a href="https://matrix.to/#/@a:b">@A &amp; B</a> <a href="https://evil.example">no</a>')).toEqual([
      { href: "https://matrix.to/#/@a:b", text: "@A & B" },
    ]);
    expect(pillsOf(undefined)).toEqual([]);
  });

  it("finds the @ or # query being typed before the caret", () => {
    expect(mentionQuery("hey @ali")).toEqual({ kind: "@", query: "ali", at: 4 });
    expect(mentionQuery("#")).toEqual({ kind: "#", query: "", at: 0 });
    expect(mentionQuery("mail@example")).toBeNull();
    expect(mentionQuery("@alice done")).toBeNull();
  });

  it("flattens a message to plain text for quotes", () => {
    expect(plainText("the **edited** message\n> quoted ||secret||")).toBe("the edited message quoted ▒▒▒");
  });
});
