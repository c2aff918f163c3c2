//! The message templates: text with `{{ … }}` holes filled from a JSON body.
//!
//! - `{{ sender.login }}`: a dotted path into the body; `{{ commits[0].id }}` an array
//!   index (`[-1]` is the last element); `{{ ["key with.dots"] }}` a key that is not a
//!   plain word (letters, digits, `_`, `-`).
//! - `{{ commits.length }}`: the number of elements of an array, characters of a string or
//!   keys of an object (an object's own `length` key wins).
//! - `{{ pusher.name ?? sender.login ?? "someone" }}`: the first alternative that is present
//!   and not `null`; a string literal in double quotes (`\"` and `\\` escaped) is always
//!   present. `{{ "{{" }}` writes two braces.
//! - Strings are inserted as they are, numbers and booleans as JSON writes them, objects
//!   and arrays as compact JSON. A path that is missing (or `null`) with no alternative
//!   renders as the empty string.
//!
//! Nothing else: no function calls, loops or code, so a template cannot do more than read
//! the body.

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Hole(Vec<Alternative>),
}

#[derive(Debug, Clone, PartialEq)]
enum Alternative {
    Literal(String),
    Path(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(i64),
}

/// A template that does not parse: what and where (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateError {
    /// Byte offset in the template.
    pub(crate) at: usize,
    /// What is wrong.
    pub(crate) message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "template error at byte {}: {}", self.at, self.message)
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    /// Parses `text`.
    pub(crate) fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let inner_start = open + 2;
            let close = find_close(&rest[inner_start..]).ok_or_else(|| TemplateError {
                at: offset + open,
                message: "`{{` without `}}`".into(),
            })?;
            let inner = &rest[inner_start..inner_start + close];
            parts.push(Part::Hole(parse_hole(inner, offset + inner_start)?));
            let next = inner_start + close + 2;
            offset += next;
            rest = &rest[next..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Fills the holes from `body`.
    pub(crate) fn render(&self, body: &Value) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Hole(alternatives) => {
                    for alt in alternatives {
                        match alt {
                            Alternative::Literal(s) => {
                                out.push_str(s);
                                break;
                            }
                            Alternative::Path(steps) => {
                                if let Some(v) = lookup(body, steps) {
                                    push_value(&mut out, &v);
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// The offset of the `}}` that closes a hole, skipping string literals.
fn find_close(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'}' if !in_string && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_hole(inner: &str, base: usize) -> Result<Vec<Alternative>, TemplateError> {
    let mut p = Parser {
        s: inner,
        pos: 0,
        base,
    };
    let mut alternatives = vec![p.alternative()?];
    loop {
        p.skip_spaces();
        if p.done() {
            break;
        }
        if !p.eat("??") {
            return Err(p.error("expected `??` or `}}`"));
        }
        alternatives.push(p.alternative()?);
    }
    Ok(alternatives)
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
    base: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> TemplateError {
        TemplateError {
            at: self.base + self.pos,
            message: message.to_owned(),
        }
    }

    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn done(&self) -> bool {
        self.rest().is_empty()
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn alternative(&mut self) -> Result<Alternative, TemplateError> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return Ok(Alternative::Literal(self.string()?));
        }
        let mut steps = Vec::new();
        loop {
            if self.eat("[") {
                self.skip_spaces();
                if self.rest().starts_with('"') {
                    steps.push(Step::Key(self.string()?));
                } else {
                    let digits: String = self
                        .rest()
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '-')
                        .collect();
                    let n = digits
                        .parse()
                        .map_err(|_| self.error("expected an index or a quoted key in `[…]`"))?;
                    self.pos += digits.len();
                    steps.push(Step::Index(n));
                }
                self.skip_spaces();
                if !self.eat("]") {
                    return Err(self.error("expected `]`"));
                }
            } else {
                if !steps.is_empty() && !self.eat(".") {
                    break;
                }
                let word: String = self
                    .rest()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
                    .collect();
                if word.is_empty() {
                    return Err(self.error("expected a field name"));
                }
                self.pos += word.len();
                steps.push(Step::Key(word));
            }
            if !(self.rest().starts_with('.') || self.rest().starts_with('[')) {
                break;
            }
        }
        Ok(Alternative::Path(steps))
    }

    fn string(&mut self) -> Result<String, TemplateError> {
        let start = self.pos;
        self.pos += 1; // the opening quote
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    Some((_, 'n')) => out.push('\n'),
                    _ => {
                        self.pos += i;
                        return Err(self.error("unknown escape (use \\\" \\\\ or \\n)"));
                    }
                },
                c => out.push(c),
            }
        }
        self.pos = start;
        Err(self.error("unterminated string"))
    }
}

fn lookup(body: &Value, steps: &[Step]) -> Option<Value> {
    let mut current = body.clone();
    for step in steps {
        let next = match (step, &current) {
            (Step::Key(k), Value::Object(map)) if map.contains_key(k) => map.get(k).cloned(),
            (Step::Key(k), Value::Object(map)) if k == "length" => Some(map.len().into()),
            (Step::Key(k), Value::Array(items)) if k == "length" => Some(items.len().into()),
            (Step::Key(k), Value::String(s)) if k == "length" => Some(s.chars().count().into()),
            (Step::Index(i), Value::Array(items)) => {
                let len = i64::try_from(items.len()).ok()?;
                let i = if *i < 0 { len + i } else { *i };
                usize::try_from(i).ok().and_then(|i| items.get(i)).cloned()
            }
            _ => None,
        };
        current = next?;
    }
    (!current.is_null()).then_some(current)
}

fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(t: &str, body: Value) -> String {
        Template::parse(t).unwrap().render(&body)
    }

    #[test]
    fn paths_indexes_length_and_defaults() {
        let push = json!({
            "sender": {"login": "octo"},
            "repository": {"full_name": "o/r"},
            "commits": [{"id": "a1", "message": "one"}, {"id": "b2", "message": "two"}],
            "n": 3, "ok": true, "nothing": null, "weird key.x": "w",
        });
        assert_eq!(
            render(
                "{{ sender.login }} pushed {{ commits.length }} commits to {{ repository.full_name }}",
                push.clone()
            ),
            "octo pushed 2 commits to o/r"
        );
        assert_eq!(
            render("{{commits[0].id}}/{{ commits[-1].message }}", push.clone()),
            "a1/two"
        );
        assert_eq!(
            render("{{ n }} {{ ok }} [{{ nothing }}]", push.clone()),
            "3 true []"
        );
        assert_eq!(render("{{ [\"weird key.x\"] }}", push.clone()), "w");
        assert_eq!(
            render("{{ missing.deep ?? nothing ?? \"none\" }}", push.clone()),
            "none"
        );
        assert_eq!(
            render("{{ missing ?? sender.login }}", push.clone()),
            "octo"
        );
        assert_eq!(render("[{{ missing }}]", push.clone()), "[]");
        assert_eq!(render("{{ commits[9].id ?? \"-\" }}", push.clone()), "-");
        assert_eq!(render("{{ sender }}", push.clone()), "{\"login\":\"octo\"}");
        assert_eq!(render("{{ sender.login.length }}", push.clone()), "4");
        assert_eq!(render("{{ sender.length }}", push.clone()), "1");
        assert_eq!(render("{{ \"{{\" }} x }}", push.clone()), "{{ x }}");
        assert_eq!(
            render("a \"quote\" {{ \"\\\"q\\\"\" }}", push),
            "a \"quote\" \"q\""
        );
        assert_eq!(render("no holes", json!(null)), "no holes");
    }

    #[test]
    fn bad_templates_say_where() {
        let e = Template::parse("ok {{ a.b").unwrap_err();
        assert_eq!(e.at, 3);
        let e = Template::parse("{{ a b }}").unwrap_err();
        assert!(e.message.contains("??"), "{e}");
        assert!(Template::parse("{{ }}").is_err());
        assert!(Template::parse("{{ a[x] }}").is_err());
        assert!(Template::parse("{{ \"open }}").is_err());
        assert!(Template::parse("{{ a. }}").is_err());
    }
}
