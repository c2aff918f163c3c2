//! Formatting both ways: mIRC control codes ↔ Matrix's HTML subset.
//!
//! IRC → Matrix: bold `\x02`, italic `\x1d`, underline `\x1f`, strikethrough `\x1e`,
//! monospace `\x11` and the 16 mIRC colours `\x03fg[,bg]` (foreground only) become
//! `<b>`, `<i>`, `<u>`, `<del>`, `<code>` and `<font color>`; hex colours `\x04`, reverse
//! `\x16` and reset `\x0f` are understood and dropped from the text.
//!
//! Matrix → IRC: the same tags (and `<strong>`, `<em>`, `<s>`, `<strike>`) become the
//! codes; `<br>`, paragraphs and list items become line breaks, links keep their address,
//! a reply's quoted fallback (`<mx-reply>`) is left out, any other tag is dropped with its
//! text kept. Colours are not sent to IRC.

/// The 16 standard mIRC colours.
const COLOURS: [&str; 16] = [
    "#ffffff", "#000000", "#00007f", "#009300", "#ff0000", "#7f0000", "#9c009c", "#fc7f00",
    "#ffff00", "#00fc00", "#009393", "#00ffff", "#0000fc", "#ff00ff", "#7f7f7f", "#d2d2d2",
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Style {
    bold: bool,
    italic: bool,
    underline: bool,
    strike: bool,
    mono: bool,
    colour: Option<&'static str>,
}

impl Style {
    fn open(&self, html: &mut String) {
        if let Some(c) = self.colour {
            html.push_str(&format!("<font color=\"{c}\" data-mx-color=\"{c}\">"));
        }
        for (on, tag) in self.tags() {
            if on {
                html.push_str(&format!("<{tag}>"));
            }
        }
    }

    fn close(&self, html: &mut String) {
        for (on, tag) in self.tags().into_iter().rev() {
            if on {
                html.push_str(&format!("</{tag}>"));
            }
        }
        if self.colour.is_some() {
            html.push_str("</font>");
        }
    }

    fn tags(&self) -> [(bool, &'static str); 5] {
        [
            (self.bold, "b"),
            (self.italic, "i"),
            (self.underline, "u"),
            (self.strike, "del"),
            (self.mono, "code"),
        ]
    }
}

/// Escapes text for HTML.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Takes up to two ASCII digits from the front of `chars`.
fn take_digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<u8> {
    let mut n: Option<u8> = None;
    for _ in 0..2 {
        match chars.peek() {
            Some(c) if c.is_ascii_digit() => {
                let d = (*c as u8) - b'0';
                n = Some(n.unwrap_or(0) * 10 + d);
                chars.next();
            }
            _ => break,
        }
    }
    n
}

/// An IRC message as Matrix text: the plain body (control codes removed) and, when the
/// message had formatting, its HTML.
pub(crate) fn irc_to_matrix(text: &str) -> (String, Option<String>) {
    let mut plain = String::new();
    let mut html = String::new();
    let mut style = Style::default();
    let mut formatted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let before = style.clone();
        match c {
            '\x02' => style.bold = !style.bold,
            '\x1d' => style.italic = !style.italic,
            '\x1f' => style.underline = !style.underline,
            '\x1e' => style.strike = !style.strike,
            '\x11' => style.mono = !style.mono,
            '\x16' => {}
            '\x0f' => style = Style::default(),
            '\x03' => match take_digits(&mut chars) {
                Some(fg) => {
                    style.colour = COLOURS.get(usize::from(fg)).copied();
                    // `,bg` only when digits follow the comma.
                    let mut look = chars.clone();
                    if look.next() == Some(',') && look.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                        take_digits(&mut chars);
                    }
                }
                None => style.colour = None,
            },
            '\x04' => {
                let hex: String = chars.clone().take(6).collect();
                if hex.len() == 6 && hex.chars().all(|h| h.is_ascii_hexdigit()) {
                    for _ in 0..6 {
                        chars.next();
                    }
                }
            }
            c if (c as u32) < 0x20 && c != '\t' => {}
            c => {
                plain.push(c);
                html.push_str(&escape_html(&c.to_string()));
                continue;
            }
        }
        formatted = true;
        if before != style {
            before.close(&mut html);
            style.open(&mut html);
        }
    }
    style.close(&mut html);
    // Remove empty pairs left by codes with no text between them.
    let html = remove_empty_tags(html);
    let has_markup = formatted && html.contains('<');
    (plain, has_markup.then_some(html))
}

fn remove_empty_tags(mut html: String) -> String {
    loop {
        let before = html.len();
        for tag in ["b", "i", "u", "del", "code"] {
            html = html.replace(&format!("<{tag}></{tag}>"), "");
        }
        for c in COLOURS {
            html = html.replace(
                &format!("<font color=\"{c}\" data-mx-color=\"{c}\"></font>"),
                "",
            );
        }
        if html.len() == before {
            return html;
        }
    }
}

/// Decodes the HTML entities Matrix clients produce.
fn decode_entity(entity: &str) -> Option<char> {
    match entity {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        e => {
            let n = e.strip_prefix('#')?;
            let code = match n.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// A Matrix message as IRC text: the HTML body mapped to control codes when there is one,
/// else the plain body.
pub(crate) fn matrix_to_irc(body: &str, html: Option<&str>) -> String {
    let Some(html) = html else {
        return body.to_owned();
    };
    let mut out = String::new();
    let mut rest = html;
    let mut skip_depth = 0usize; // inside <mx-reply>
    let mut links: Vec<Option<String>> = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<') {
            let Some(end) = after.find('>') else {
                break;
            };
            let tag = &after[..end];
            rest = &after[end + 1..];
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
                .to_ascii_lowercase();
            if name == "mx-reply" {
                if closing {
                    skip_depth = skip_depth.saturating_sub(1);
                } else {
                    skip_depth += 1;
                }
                continue;
            }
            if skip_depth > 0 {
                continue;
            }
            match name.as_str() {
                "b" | "strong" => out.push('\x02'),
                "i" | "em" => out.push('\x1d'),
                "u" => out.push('\x1f'),
                "del" | "s" | "strike" => out.push('\x1e'),
                "code" => out.push('\x11'),
                "br" => out.push('\n'),
                "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "pre" | "blockquote"
                    if closing =>
                {
                    out.push('\n')
                }
                "li" if !closing => out.push_str("\n* "),
                "a" if !closing => links.push(attribute(tag, "href")),
                "a" => {
                    if let Some(Some(href)) = links.pop() {
                        if !out.ends_with(href.as_str()) {
                            out.push_str(&format!(" ({href})"));
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let (text, next) = match rest.find('<') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        rest = next;
        if skip_depth > 0 {
            continue;
        }
        out.push_str(&decode_text(text));
    }
    // Line breaks of block ends at the very end, or doubled, are noise.
    let lines: Vec<&str> = out.split('\n').filter(|l| !l.trim().is_empty()).collect();
    lines.join("\n")
}

fn decode_text(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find(';').filter(|&j| j <= 10) {
            Some(j) => match decode_entity(&after[..j]) {
                Some(c) => {
                    out.push(c);
                    rest = &after[j + 1..];
                }
                None => {
                    out.push('&');
                    rest = after;
                }
            },
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A reply's plain body without the quote of the replied-to message that older clients put
/// in front (`> <@bob:x> text` lines, then an empty line).
pub(crate) fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with('>') {
        return body;
    }
    let mut rest = body;
    while rest.starts_with('>') {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    rest.strip_prefix('\n').unwrap_or(rest)
}

/// The value of attribute `name` in a tag's text (`a href="…"`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let i = tag.find(&format!("{name}="))?;
    let value = &tag[i + name.len() + 1..];
    let quote = value.chars().next()?;
    if quote == '"' || quote == '\'' {
        let v = &value[1..];
        let end = v.find(quote)?;
        Some(decode_text(&v[..end]))
    } else {
        let end = value.find([' ', '/']).unwrap_or(value.len());
        Some(decode_text(&value[..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irc_codes_become_html() {
        assert_eq!(irc_to_matrix("plain <text>"), ("plain <text>".into(), None));
        let (plain, html) = irc_to_matrix("a \x02bold\x02 and \x1ditalic\x1d \x1fu\x0f end");
        assert_eq!(plain, "a bold and italic u end");
        assert_eq!(
            html.unwrap(),
            "a <b>bold</b> and <i>italic</i> <u>u</u> end"
        );
        let (plain, html) = irc_to_matrix("\x0304,01red\x03 normal");
        assert_eq!(plain, "red normal");
        assert_eq!(
            html.unwrap(),
            "<font color=\"#ff0000\" data-mx-color=\"#ff0000\">red</font> normal"
        );
        // Codes that change nothing visible leave no markup.
        assert_eq!(irc_to_matrix("x\x02\x02y"), ("xy".into(), None));
        assert_eq!(irc_to_matrix("\x16rev\x16"), ("rev".into(), None));
        let (plain, html) = irc_to_matrix("\x02a & b");
        assert_eq!(plain, "a & b");
        assert_eq!(html.unwrap(), "<b>a &amp; b</b>");
        // A comma not followed by digits is text.
        assert_eq!(irc_to_matrix("\x034,x").0, ",x");
    }

    #[test]
    fn html_becomes_irc_codes() {
        assert_eq!(matrix_to_irc("plain", None), "plain");
        assert_eq!(
            matrix_to_irc(
                "",
                Some("<strong>b</strong> <em>i</em> <u>u</u> <del>s</del> <code>c</code>")
            ),
            "\x02b\x02 \x1di\x1d \x1fu\x1f \x1es\x1e \x11c\x11"
        );
        assert_eq!(
            matrix_to_irc("", Some("<p>one</p><p>two &amp; &lt;3&gt; &#233;</p>")),
            "one\ntwo & <3> é"
        );
        assert_eq!(
            matrix_to_irc(
                "",
                Some("<mx-reply><blockquote>quoted</blockquote></mx-reply>answer")
            ),
            "answer"
        );
        assert_eq!(
            matrix_to_irc("", Some("see <a href=\"https://x.org/\">docs</a>")),
            "see docs (https://x.org/)"
        );
        assert_eq!(
            matrix_to_irc("", Some("<a href=\"https://x.org/\">https://x.org/</a>")),
            "https://x.org/"
        );
        assert_eq!(
            matrix_to_irc("", Some("<ul><li>a</li><li>b</li></ul>")),
            "* a\n* b"
        );
        assert_eq!(matrix_to_irc("", Some("<font color=\"red\">x</font>")), "x");
    }

    #[test]
    fn reply_fallbacks_are_left_out() {
        assert_eq!(
            strip_reply_fallback("> <@bob:x> question\n> more\n\nthe answer"),
            "the answer"
        );
        assert_eq!(strip_reply_fallback("no quote"), "no quote");
        assert_eq!(strip_reply_fallback("a > b"), "a > b");
    }

    #[test]
    fn round_trip_of_bold_and_italic() {
        let irc = "\x02bold\x02 \x1dit\x1d";
        let (_, html) = irc_to_matrix(irc);
        assert_eq!(matrix_to_irc("", html.as_deref()), irc);
    }
}
