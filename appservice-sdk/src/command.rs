//! Bot commands: `!name arg "quoted arg"`.

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command's name, lowercased (`!Echo` and `!echo` are the same command).
    pub name: String,
    /// The arguments: split on whitespace; `"…"` keeps spaces, `\"` and `\\` escape.
    pub args: Vec<String>,
    /// Everything after the name, trimmed, as typed (for commands that take free text).
    pub rest: String,
}

impl Command {
    /// Whether this is the command `name` (compared case-insensitively).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Parses message bodies that start with a prefix (`!` by default).
#[derive(Debug, Clone)]
pub struct CommandParser {
    prefix: String,
}

impl Default for CommandParser {
    fn default() -> Self {
        Self::new("!")
    }
}

impl CommandParser {
    /// A parser for commands starting with `prefix` (e.g. `!`, `.`, `bot:`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The command in `body`, or `None` when the body does not start with the prefix
    /// directly followed by a name.
    pub fn parse(&self, body: &str) -> Option<Command> {
        let after = body.trim_start().strip_prefix(self.prefix.as_str())?;
        let name_end = after.find(char::is_whitespace).unwrap_or(after.len());
        let name = &after[..name_end];
        if name.is_empty() {
            return None;
        }
        let rest = after[name_end..].trim();
        Some(Command {
            name: name.to_lowercase(),
            args: split_args(rest),
            rest: rest.to_owned(),
        })
    }
}

/// Parses `body` with the `!` prefix.
pub fn parse_command(body: &str) -> Option<Command> {
    CommandParser::default().parse(body)
}

/// Splits on whitespace, keeping `"quoted parts"` together. An unterminated quote runs to
/// the end.
fn split_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => match chars.next() {
                Some(next @ ('"' | '\\')) => current.push(next),
                Some(next) => {
                    current.push('\\');
                    current.push(next);
                }
                None => current.push('\\'),
            },
            '"' => {
                quoted = !quoted;
                in_arg = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                current.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(current);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(body: &str) -> Vec<String> {
        parse_command(body).unwrap().args
    }

    #[test]
    fn name_is_case_insensitive_and_args_split() {
        let c = parse_command("!ECHO hello   world").unwrap();
        assert_eq!(c.name, "echo");
        assert!(c.is("Echo"));
        assert_eq!(c.args, ["hello", "world"]);
        assert_eq!(c.rest, "hello   world");
    }

    #[test]
    fn quoted_args_keep_spaces_and_escapes() {
        assert_eq!(
            args(r#"!ban "bad user" spam "say \"hi\"" a\b"#),
            ["bad user", "spam", r#"say "hi""#, r"a\b"]
        );
        assert_eq!(args(r#"!x "" y"#), ["", "y"]);
        assert_eq!(args(r#"!x a"b c"d"#), ["ab cd"]);
        assert_eq!(args(r#"!x "unterminated arg"#), ["unterminated arg"]);
    }

    #[test]
    fn not_a_command() {
        assert_eq!(parse_command("hello !echo"), None);
        assert_eq!(parse_command("!"), None);
        assert_eq!(parse_command("! echo"), None);
        assert_eq!(parse_command(""), None);
    }

    #[test]
    fn no_args_and_other_prefixes() {
        let c = parse_command("  !help").unwrap();
        assert_eq!(
            (c.name.as_str(), c.args.len(), c.rest.as_str()),
            ("help", 0, "")
        );
        let p = CommandParser::new("bot:");
        assert_eq!(p.parse("bot:Poll a | b").unwrap().name, "poll");
        assert_eq!(p.parse("!poll a"), None);
    }
}
