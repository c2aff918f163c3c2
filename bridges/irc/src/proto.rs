//! The IRC wire format (RFC 1459 / RFC 2812 as servers speak it today): parsing lines,
//! writing commands, CTCP ACTION, splitting long messages under the 512-byte line limit,
//! and making nicks out of Matrix names.

/// The longest line a server accepts, `\r\n` included.
pub(crate) const MAX_LINE: usize = 512;

/// Room the server's relay adds in front of a message (`:nick!user@host `) that the sender
/// does not see: a generous bound for the user and host parts (the nick is counted exactly).
const PREFIX_ALLOWANCE: usize = 1 + 1 + 12 + 1 + 64 + 1;

/// One line from the server: `[:prefix] COMMAND params… [:trailing]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) prefix: Option<String>,
    pub(crate) command: String,
    pub(crate) params: Vec<String>,
}

impl Line {
    /// Parses a line without its `\r\n`; IRCv3 tags (`@a=b `) are skipped. `None` for an
    /// empty line.
    pub(crate) fn parse(line: &str) -> Option<Line> {
        let mut rest = line.trim_end_matches(['\r', '\n']);
        if let Some(tagged) = rest.strip_prefix('@') {
            rest = tagged.split_once(' ').map_or("", |(_, r)| r);
        }
        rest = rest.trim_start_matches(' ');
        let mut prefix = None;
        if let Some(p) = rest.strip_prefix(':') {
            let (p, r) = p.split_once(' ')?;
            prefix = Some(p.to_owned());
            rest = r.trim_start_matches(' ');
        }
        let (command, mut rest) = match rest.split_once(' ') {
            Some((c, r)) => (c, r),
            None => (rest, ""),
        };
        if command.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing.to_owned());
                break;
            }
            match rest.split_once(' ') {
                Some((p, r)) => {
                    params.push(p.to_owned());
                    rest = r;
                }
                None => {
                    params.push(rest.to_owned());
                    break;
                }
            }
        }
        Some(Line {
            prefix,
            command: command.to_ascii_uppercase(),
            params,
        })
    }

    /// The nick of the prefix (`nick!user@host` → `nick`).
    pub(crate) fn nick(&self) -> Option<&str> {
        let p = self.prefix.as_deref()?;
        Some(p.split(['!', '@']).next().unwrap_or(p))
    }

    /// Parameter `i`, or `""`.
    pub(crate) fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }
}

/// Removes what cannot travel inside one parameter of a line (CR, LF, NUL).
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect()
}

/// The text of a CTCP ACTION (`\x01ACTION text\x01`), if `text` is one.
pub(crate) fn parse_action(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('\x01')?;
    let inner = inner.strip_suffix('\x01').unwrap_or(inner);
    let action = inner.strip_prefix("ACTION")?;
    Some(action.strip_prefix(' ').unwrap_or(action))
}

/// Whether `text` is some other CTCP request (VERSION, PING…), which is not relayed.
pub(crate) fn is_ctcp(text: &str) -> bool {
    text.starts_with('\x01')
}

/// How many bytes of text fit in one `PRIVMSG <target> :<text>` sent by `nick`, once the
/// server adds the sender's prefix for the other clients.
pub(crate) fn text_budget(command: &str, target: &str, nick: &str) -> usize {
    let fixed = command.len() + 1 + target.len() + 2 + 2 + nick.len() + PREFIX_ALLOWANCE;
    MAX_LINE.saturating_sub(fixed).max(16)
}

/// Splits `text` into lines of at most `budget` bytes: at newlines, then at the last space
/// that fits, then (a word longer than a line) at the last UTF-8 character boundary that
/// fits. Empty lines are dropped; a character is never cut.
pub(crate) fn split_message(text: &str, budget: usize) -> Vec<String> {
    let budget = budget.max(4);
    let mut out = Vec::new();
    for line in text.split('\n') {
        let mut rest = line.trim_end_matches('\r');
        while rest.len() > budget {
            let mut cut = budget;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let head = &rest[..cut];
            // Prefer a space, unless that makes the piece tiny.
            let (piece, next) = match head.rfind(' ') {
                Some(sp) if sp >= budget / 2 => (&rest[..sp], &rest[sp + 1..]),
                _ => (head, &rest[cut..]),
            };
            if !piece.is_empty() {
                out.push(piece.to_owned());
            }
            rest = next;
        }
        if !rest.trim().is_empty() {
            out.push(rest.to_owned());
        }
    }
    out
}

/// A valid nick made from a Matrix display name or localpart: letters, digits and
/// `-[]\`^{}|_` kept, anything else dropped (spaces become `_`), not starting with a digit
/// or `-`, at most `max` characters including `prefix` and `suffix`.
pub(crate) fn sanitize_nick(name: &str, prefix: &str, suffix: &str, max: usize) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-[]\\`^{}|_".contains(c);
    let mut base: String = name
        .chars()
        .map(|c| if c == ' ' { '_' } else { c })
        .filter(|&c| allowed(c))
        .collect();
    let fixed = prefix.len() + suffix.len();
    let room = max.saturating_sub(fixed).max(1);
    base.truncate(room);
    let mut nick = format!("{prefix}{base}{suffix}");
    if base.is_empty() {
        nick = format!("{prefix}matrix{suffix}");
    }
    if nick.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        nick.insert(0, '_');
    }
    nick.truncate(max.max(1));
    nick
}

/// The next nick to try after `433 ERR_NICKNAMEINUSE` (or `432`): `nick` with `attempt`
/// appended, shortened to fit `max`.
pub(crate) fn alternative_nick(nick: &str, attempt: u32, max: usize) -> String {
    let tail = attempt.to_string();
    let mut base = nick.to_owned();
    base.truncate(max.saturating_sub(tail.len()).max(1));
    format!("{base}{tail}")
}

/// Whether `name` is a channel name the bridge accepts: `#` then 1–49 characters, none of
/// them space, comma, colon, BEL or a control character.
pub(crate) fn valid_channel(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('#') else {
        return false;
    };
    !rest.is_empty()
        && rest.len() < 50
        && rest
            .chars()
            .all(|c| !c.is_control() && !matches!(c, ' ' | ',' | ':' | '\x07'))
}

/// IRC's case-insensitive comparison of nicks and channels (`rfc1459` casemapping:
/// `[]\~` are the upper case of `{}|^`).
pub(crate) fn irc_lower(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '[' => '{',
            ']' => '}',
            '\\' => '|',
            '~' => '^',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A Matrix localpart for the IRC nick: lower case (IRC nicks are case-insensitive),
/// `[a-z0-9.-]` kept, `_` doubled, anything else as `=xx` (its bytes in hex), so that every
/// nick maps to one valid localpart and back.
pub(crate) fn nick_to_localpart(nick: &str) -> String {
    let mut out = String::new();
    for b in irc_lower(nick).bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => out.push(char::from(b)),
            b'_' => out.push_str("__"),
            _ => out.push_str(&format!("={b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_prefix_params_and_trailing() {
        let l = Line::parse(":nick!u@h PRIVMSG #chan :hello there\r\n").unwrap();
        assert_eq!(l.nick(), Some("nick"));
        assert_eq!(l.command, "PRIVMSG");
        assert_eq!(l.params, ["#chan", "hello there"]);
        let l = Line::parse("PING :irc.example").unwrap();
        assert_eq!((l.prefix, l.command.as_str()), (None, "PING"));
        assert_eq!(l.params, ["irc.example"]);
        let l = Line::parse("@time=x :s 001 me :Welcome").unwrap();
        assert_eq!(l.command, "001");
        assert_eq!(l.param(0), "me");
        let l = Line::parse(":a!b@c JOIN #x").unwrap();
        assert_eq!(l.params, ["#x"]);
        let l = Line::parse(":srv 353 me = #x :@op +voice plain").unwrap();
        assert_eq!(l.param(3), "@op +voice plain");
        assert_eq!(Line::parse(""), None);
        assert_eq!(Line::parse(":only-prefix"), None);
    }

    #[test]
    fn actions_and_ctcp() {
        assert_eq!(parse_action("\x01ACTION waves\x01"), Some("waves"));
        assert_eq!(parse_action("\x01ACTION waves"), Some("waves"));
        assert_eq!(parse_action("\x01VERSION\x01"), None);
        assert_eq!(parse_action("plain"), None);
        assert!(is_ctcp("\x01VERSION\x01"));
        assert_eq!(clean("a\r\nb\0c"), "abc");
    }

    #[test]
    fn splits_long_messages_at_spaces_and_char_boundaries() {
        let words = "word ".repeat(300);
        let parts = split_message(&words, 100);
        assert!(parts.iter().all(|p| p.len() <= 100));
        assert_eq!(parts.join(" ").split_whitespace().count(), 300);
        // No spaces at all, multi-byte characters: never cut inside one.
        let text = "é".repeat(500);
        let parts = split_message(&text, 101);
        assert!(parts.iter().all(|p| p.len() <= 101));
        assert_eq!(parts.concat(), text);
        // Newlines make separate lines; empty ones disappear.
        assert_eq!(split_message("a\n\nb\r\n", 50), ["a", "b"]);
        // The budget leaves room for the relay's prefix.
        let budget = text_budget("PRIVMSG", "#chan", "alice");
        assert!(budget < MAX_LINE - "PRIVMSG #chan :\r\n".len() - 50);
        assert!(budget > 350);
    }

    #[test]
    fn nicks_from_matrix_names() {
        assert_eq!(
            sanitize_nick("Alice Smith", "", "[m]", 30),
            "Alice_Smith[m]"
        );
        assert_eq!(sanitize_nick("42", "", "", 30), "_42");
        assert_eq!(sanitize_nick("ßüñ", "", "", 30), "matrix");
        assert_eq!(
            sanitize_nick("averyveryverylongname", "m_", "", 9),
            "m_averyve"
        );
        assert_eq!(alternative_nick("alice[m]", 2, 30), "alice[m]2");
        assert_eq!(alternative_nick("abcdefghi", 12, 9), "abcdefg12");
    }

    #[test]
    fn nicks_map_to_localparts() {
        assert_eq!(nick_to_localpart("Bob"), "bob");
        assert_eq!(nick_to_localpart("a_b"), "a__b");
        assert_eq!(nick_to_localpart("[x]"), "=7bx=7d");
        assert_eq!(nick_to_localpart("{X}"), nick_to_localpart("[x]"));
        assert_eq!(irc_lower("#Chan[1]"), "#chan{1}");
    }

    #[test]
    fn channel_names() {
        assert!(valid_channel("#rust"));
        assert!(valid_channel("#a-b_c.d"));
        assert!(!valid_channel("rust"));
        assert!(!valid_channel("#"));
        assert!(!valid_channel("#a b"));
        assert!(!valid_channel("#a,b"));
        assert!(!valid_channel(&format!("#{}", "x".repeat(60))));
    }
}
