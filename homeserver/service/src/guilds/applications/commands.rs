//! Slash commands as data (spec/applications.md §5, §6): reading a command a bot registers,
//! with Discord's limits, and checking an invocation's options against it. Pure functions:
//! the service stores and resolves, these only look at JSON.

use paracord_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// At most this many commands per application per guild.
pub const MAX_COMMANDS: usize = 100;
/// At most this many options per command, and choices per option.
pub const MAX_OPTIONS: usize = 25;
pub const MAX_CHOICES: usize = 25;
/// A STRING option's value is at most this long (and `min_length`/`max_length` in range).
pub const MAX_STRING: u64 = 6000;
/// Integers are exact in every JSON reader up to 2^53.
const MAX_SAFE: i64 = 9_007_199_254_740_991;

/// The option types this profile supports, with Discord's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionType {
    String = 3,
    Integer = 4,
    Boolean = 5,
    User = 6,
    Channel = 7,
    Role = 8,
    Number = 10,
}

impl OptionType {
    pub fn from_number(n: u64) -> Option<OptionType> {
        Some(match n {
            3 => OptionType::String,
            4 => OptionType::Integer,
            5 => OptionType::Boolean,
            6 => OptionType::User,
            7 => OptionType::Channel,
            8 => OptionType::Role,
            10 => OptionType::Number,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            OptionType::String => "a string",
            OptionType::Integer => "an integer",
            OptionType::Boolean => "a boolean",
            OptionType::User => "a user id",
            OptionType::Channel => "a channel id",
            OptionType::Role => "a role id",
            OptionType::Number => "a number",
        }
    }
}

/// A choice of an option: a name shown to the user and the value sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub name: String,
    pub value: Value,
}

/// An option of a command, as stored and listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandOption {
    #[serde(rename = "type")]
    pub kind: u64,
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_value: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
}

/// A command as a bot registers it (everything but its ids).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub options: Vec<CommandOption>,
    /// Members need all of these (a u64 as a decimal string) to see and use the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_member_permissions: Option<String>,
}

/// An option value of an invocation, checked against its option.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GivenOption {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: u64,
    pub value: Value,
}

fn invalid(at: &str, what: &str) -> Error {
    Error::invalid_param(format!("{at}: {what}"))
}

fn wrong_type(at: &str, what: &str) -> Error {
    Error::bad_json(format!("{at} must be {what}"))
}

/// Discord's rule for command and option names: 1 to 32 letters, digits, `-` or `_`, in
/// lower case where a letter has cases (`^[-_\p{L}\p{N}]{1,32}$`).
pub fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=32).contains(&n)
        && name
            .chars()
            .all(|c| c == '-' || c == '_' || c.is_alphabetic() || c.is_numeric())
        && name.to_lowercase() == name
}

fn text<'a>(o: &'a Map<String, Value>, key: &str, at: &str) -> Result<Option<&'a str>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(&format!("{at}{key}"), "a string")),
    }
}

fn length(o: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u64>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_STRING => Ok(Some(n)),
            Some(_) => Err(invalid(&format!("{at}{key}"), "at most 6000")),
            None => Err(wrong_type(&format!("{at}{key}"), "a non-negative integer")),
        },
    }
}

fn name_and_description(o: &Map<String, Value>, at: &str) -> Result<(String, String)> {
    let name = text(o, "name", at)?
        .ok_or_else(|| Error::missing_param(format!("{at}name is required")))?;
    if !valid_name(name) {
        return Err(invalid(
            &format!("{at}name"),
            "1 to 32 lower-case letters, digits, - or _",
        ));
    }
    let description = text(o, "description", at)?
        .ok_or_else(|| Error::missing_param(format!("{at}description is required")))?;
    let n = description.chars().count();
    if !(1..=100).contains(&n) {
        return Err(invalid(&format!("{at}description"), "1 to 100 characters"));
    }
    Ok((name.to_owned(), description.to_owned()))
}

/// A bound (`min_value`/`max_value`) of an INTEGER or NUMBER option.
fn bound(o: &Map<String, Value>, key: &str, kind: OptionType, at: &str) -> Result<Option<Number>> {
    let Some(v) = o.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let at = format!("{at}{key}");
    match kind {
        OptionType::Integer => match v.as_i64() {
            Some(n) if n.abs() <= MAX_SAFE => Ok(Some(Number::from(n))),
            Some(_) => Err(invalid(&at, "between -2^53 and 2^53")),
            None => Err(wrong_type(&at, "an integer")),
        },
        OptionType::Number => match v.as_f64() {
            Some(f) if f.is_finite() => Ok(v.as_number().cloned()),
            _ => Err(wrong_type(&at, "a number")),
        },
        _ => Err(invalid(&at, "only INTEGER and NUMBER options have bounds")),
    }
}

fn read_option(v: &Value, i: usize) -> Result<CommandOption> {
    let at = format!("options[{i}].");
    let o = v
        .as_object()
        .ok_or_else(|| wrong_type(&format!("options[{i}]"), "an object"))?;
    let type_at = format!("{at}type");
    let kind_n = o
        .get("type")
        .ok_or_else(|| Error::missing_param(format!("{type_at} is required")))?
        .as_u64()
        .ok_or_else(|| wrong_type(&type_at, "an integer"))?;
    let kind = OptionType::from_number(kind_n).ok_or_else(|| {
        invalid(
            &type_at,
            "STRING 3, INTEGER 4, BOOLEAN 5, USER 6, CHANNEL 7, ROLE 8 or NUMBER 10 \
             (sub-commands, MENTIONABLE and ATTACHMENT are not supported)",
        )
    })?;
    let (name, description) = name_and_description(o, &at)?;
    let required = match o.get("required") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(wrong_type(&format!("{at}required"), "a boolean")),
    };
    let min_value = bound(o, "min_value", kind, &at)?;
    let max_value = bound(o, "max_value", kind, &at)?;
    if let (Some(lo), Some(hi)) = (&min_value, &max_value) {
        if lo.as_f64() > hi.as_f64() {
            return Err(invalid(&format!("{at}min_value"), "greater than max_value"));
        }
    }
    let min_length = length(o, "min_length", &at)?;
    let max_length = length(o, "max_length", &at)?;
    if (min_length.is_some() || max_length.is_some()) && kind != OptionType::String {
        return Err(invalid(
            &format!("{at}min_length"),
            "only STRING options have lengths",
        ));
    }
    if let (Some(lo), Some(hi)) = (min_length, max_length) {
        if lo > hi {
            return Err(invalid(
                &format!("{at}min_length"),
                "greater than max_length",
            ));
        }
    }
    let mut choices = Vec::new();
    match o.get("choices") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            if !matches!(
                kind,
                OptionType::String | OptionType::Integer | OptionType::Number
            ) {
                return Err(invalid(
                    &format!("{at}choices"),
                    "only STRING, INTEGER and NUMBER options have choices",
                ));
            }
            if list.len() > MAX_CHOICES {
                return Err(invalid(&format!("{at}choices"), "at most 25 choices"));
            }
            for (j, c) in list.iter().enumerate() {
                let cat = format!("{at}choices[{j}].");
                let co = c
                    .as_object()
                    .ok_or_else(|| wrong_type(&format!("{at}choices[{j}]"), "an object"))?;
                let cname = text(co, "name", &cat)?
                    .ok_or_else(|| Error::missing_param(format!("{cat}name is required")))?;
                if !(1..=100).contains(&cname.chars().count()) {
                    return Err(invalid(&format!("{cat}name"), "1 to 100 characters"));
                }
                let value = co
                    .get("value")
                    .ok_or_else(|| Error::missing_param(format!("{cat}value is required")))?;
                check_value(kind, value, &format!("{cat}value"))?;
                choices.push(Choice {
                    name: cname.to_owned(),
                    value: value.clone(),
                });
            }
        }
        Some(_) => return Err(wrong_type(&format!("{at}choices"), "an array")),
    }
    Ok(CommandOption {
        kind: kind_n,
        name,
        description,
        required,
        choices,
        min_value,
        max_value,
        min_length,
        max_length,
    })
}

/// A command as a bot sent it (`POST`/`PUT` …/commands), with Discord's limits: name,
/// description, up to 25 options with unique names and the required ones first.
pub fn read_command(v: &Value) -> Result<CommandSpec> {
    let o = v
        .as_object()
        .ok_or_else(|| Error::bad_json("a command must be a JSON object"))?;
    match o.get("type") {
        None | Some(Value::Null) => {}
        Some(t) if t.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(invalid(
                "type",
                "only CHAT_INPUT (1) commands are supported",
            ))
        }
    }
    let (name, description) = name_and_description(o, "")?;
    let options = match o.get("options") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            if list.len() > MAX_OPTIONS {
                return Err(invalid("options", "at most 25 options"));
            }
            list.iter()
                .enumerate()
                .map(|(i, v)| read_option(v, i))
                .collect::<Result<Vec<_>>>()?
        }
        Some(_) => return Err(wrong_type("options", "an array")),
    };
    let mut seen_optional = false;
    for (i, opt) in options.iter().enumerate() {
        if opt.required && seen_optional {
            return Err(invalid(
                &format!("options[{i}].required"),
                "required options come before optional ones",
            ));
        }
        seen_optional |= !opt.required;
        if options[..i].iter().any(|o| o.name == opt.name) {
            return Err(invalid(
                &format!("options[{i}].name"),
                "two options have this name",
            ));
        }
    }
    let default_member_permissions = match o.get("default_member_permissions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            crate::guilds::permissions::Permissions::parse(s)
                .ok_or_else(|| invalid("default_member_permissions", "a u64 as a decimal string"))?
                .to_wire(),
        ),
        Some(_) => {
            return Err(wrong_type(
                "default_member_permissions",
                "a u64 as a decimal string",
            ))
        }
    };
    Ok(CommandSpec {
        name,
        description,
        options,
        default_member_permissions,
    })
}

/// A value of the option type (not yet checked against bounds or the guild).
fn check_value(kind: OptionType, v: &Value, at: &str) -> Result<()> {
    let ok = match kind {
        OptionType::String | OptionType::User | OptionType::Channel | OptionType::Role => {
            v.is_string()
        }
        OptionType::Integer => v.as_i64().is_some_and(|n| n.abs() <= MAX_SAFE),
        OptionType::Boolean => v.is_boolean(),
        OptionType::Number => v.as_f64().is_some_and(f64::is_finite),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(at, &format!("must be {}", kind.name())))
    }
}

/// The options of an invocation, checked against the command: each known, given once, of its
/// type, within its bounds and choices; every required one given. Answered in the command's
/// order. Ids (USER, CHANNEL, ROLE) are checked against the guild by the caller.
pub fn check_options(spec: &CommandSpec, given: &Value) -> Result<Vec<GivenOption>> {
    let list = match given {
        Value::Null => Vec::new(),
        Value::Array(list) => list.clone(),
        _ => return Err(wrong_type("options", "an array of {name, value}")),
    };
    let mut values: Vec<(String, Value)> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let o = item
            .as_object()
            .ok_or_else(|| wrong_type(&format!("options[{i}]"), "an object"))?;
        let name = text(o, "name", &format!("options[{i}]."))?
            .ok_or_else(|| Error::missing_param(format!("options[{i}].name is required")))?;
        if !spec.options.iter().any(|opt| opt.name == name) {
            return Err(invalid(
                &format!("options[{i}].name"),
                &format!("/{} has no option {name}", spec.name),
            ));
        }
        if values.iter().any(|(n, _)| n == name) {
            return Err(invalid(
                &format!("options[{i}].name"),
                &format!("{name} is given twice"),
            ));
        }
        let value = o
            .get("value")
            .filter(|v| !v.is_null())
            .ok_or_else(|| Error::missing_param(format!("options[{i}].value is required")))?;
        values.push((name.to_owned(), value.clone()));
    }
    let mut out = Vec::new();
    for opt in &spec.options {
        let Some((_, value)) = values.iter().find(|(n, _)| *n == opt.name) else {
            if opt.required {
                return Err(Error::missing_param(format!(
                    "option {} of /{} is required",
                    opt.name, spec.name
                )));
            }
            continue;
        };
        let at = format!("option {}", opt.name);
        let kind = OptionType::from_number(opt.kind)
            .ok_or_else(|| Error::internal("a stored option of an unknown type"))?;
        check_value(kind, value, &at)?;
        if !opt.choices.is_empty() && !opt.choices.iter().any(|c| same(&c.value, value)) {
            return Err(invalid(&at, "not one of the choices"));
        }
        if let Some(f) = value.as_f64() {
            if opt
                .min_value
                .as_ref()
                .and_then(Number::as_f64)
                .is_some_and(|m| f < m)
            {
                return Err(invalid(&at, "below min_value"));
            }
            if opt
                .max_value
                .as_ref()
                .and_then(Number::as_f64)
                .is_some_and(|m| f > m)
            {
                return Err(invalid(&at, "above max_value"));
            }
        }
        if let (OptionType::String, Some(s)) = (kind, value.as_str()) {
            let n = s.chars().count() as u64;
            if n > opt.max_length.unwrap_or(MAX_STRING) || n < opt.min_length.unwrap_or(0) {
                return Err(invalid(&at, "its length is out of range"));
            }
        }
        out.push(GivenOption {
            name: opt.name.clone(),
            kind: opt.kind,
            value: value.clone(),
        });
    }
    Ok(out)
}

/// JSON equality where 2 and 2.0 are the same number.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The errcode and message of an error.
    fn said(e: Error) -> (String, String) {
        let body = e.classify().1;
        (
            body["errcode"].as_str().unwrap().to_owned(),
            body["error"].as_str().unwrap().to_owned(),
        )
    }

    /// The command example of spec/applications.md reads, and prints back as the spec says
    /// a Command object looks (less its ids).
    #[test]
    fn the_spec_example_is_a_valid_command() {
        let text = include_str!("../../../../../spec/applications.md");
        let block = text
            .split("<!-- command -->")
            .nth(1)
            .and_then(|b| b.split("```json").nth(1))
            .and_then(|b| b.split("```").next())
            .unwrap();
        let v: Value = serde_json::from_str(block).unwrap();
        let spec = read_command(&v).unwrap();
        assert_eq!(spec.options.len(), 3);
        let mut expected = v.clone();
        expected
            .as_object_mut()
            .unwrap()
            .remove("default_member_permissions");
        assert_eq!(serde_json::to_value(&spec).unwrap(), expected);
    }

    #[test]
    fn names_follow_discords_rule() {
        for ok in [
            "ping",
            "roll-dice",
            "a_b",
            "x",
            "été",
            "数字",
            "n0",
            &"a".repeat(32),
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Ping",
            "with space",
            "semi;colon",
            "slash/",
            &"a".repeat(33),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_command_reads_with_its_options() {
        let spec = read_command(&json!({
            "name": "roll", "description": "Rolls dice",
            "options": [
                { "type": 4, "name": "sides", "description": "faces", "required": true,
                  "min_value": 2, "max_value": 100 },
                { "type": 3, "name": "label", "description": "what for",
                  "choices": [{ "name": "Attack", "value": "attack" }] },
            ],
        }))
        .unwrap();
        assert_eq!(spec.options.len(), 2);
        assert_eq!(spec.options[0].min_value, Some(Number::from(2)));
        assert!(!spec.options[1].required);
    }

    #[test]
    fn bad_commands_are_refused_naming_the_field() {
        let base = |options: Value| json!({ "name": "x", "description": "d", "options": options });
        let cases = [
            (json!({ "name": "Bad Name", "description": "d" }), "name"),
            (json!({ "name": "ok", "description": "" }), "description"),
            (
                json!({ "name": "ok", "description": "d".repeat(101) }),
                "description",
            ),
            (
                base(json!((0..26)
                    .map(|i| json!({ "type": 3, "name": format!("o{i}"), "description": "d" }))
                    .collect::<Vec<_>>())),
                "options",
            ),
            (
                base(json!([
                    { "type": 3, "name": "a", "description": "d" },
                    { "type": 3, "name": "b", "description": "d", "required": true },
                ])),
                "options[1].required",
            ),
            (
                base(json!([{ "type": 1, "name": "sub", "description": "d" }])),
                "options[0].type",
            ),
            (
                base(json!([{ "type": 5, "name": "b", "description": "d",
                              "choices": [{ "name": "x", "value": true }] }])),
                "options[0].choices",
            ),
            (
                base(json!([{ "type": 4, "name": "n", "description": "d",
                              "min_value": 5, "max_value": 1 }])),
                "options[0].min_value",
            ),
            (
                base(json!([
                    { "type": 3, "name": "a", "description": "d" },
                    { "type": 3, "name": "a", "description": "d" },
                ])),
                "options[1].name",
            ),
        ];
        for (body, field) in cases {
            let (code, msg) = said(read_command(&body).unwrap_err());
            assert_eq!(code, "M_INVALID_PARAM", "{body}: {msg}");
            assert!(msg.starts_with(&format!("{field}:")), "{body}: {msg}");
        }
        let e = read_command(&base(json!([{ "type": 3, "name": "a", "description": "d",
                                             "required": "yes" }])))
        .unwrap_err();
        assert_eq!(said(e).0, "M_BAD_JSON");
    }

    #[test]
    fn invocations_are_type_checked() {
        let spec = read_command(&json!({
            "name": "roll", "description": "Rolls dice",
            "options": [
                { "type": 4, "name": "sides", "description": "faces", "required": true,
                  "min_value": 2, "max_value": 100 },
                { "type": 5, "name": "loud", "description": "shout" },
                { "type": 3, "name": "label", "description": "what for",
                  "choices": [{ "name": "Attack", "value": "attack" }] },
            ],
        }))
        .unwrap();
        let given = check_options(
            &spec,
            &json!([{ "name": "loud", "value": true }, { "name": "sides", "value": 6 }]),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&given).unwrap(),
            json!([{ "name": "sides", "type": 4, "value": 6 },
                   { "name": "loud", "type": 5, "value": true }])
        );
        let refused = [
            json!([{ "name": "sides", "value": "6" }]),
            json!([{ "name": "sides", "value": 6.5 }]),
            json!([{ "name": "sides", "value": 1 }]),
            json!([{ "name": "sides", "value": 101 }]),
            json!([{ "name": "loud", "value": true }]),
            json!([{ "name": "sides", "value": 6 }, { "name": "nope", "value": 1 }]),
            json!([{ "name": "sides", "value": 6 }, { "name": "sides", "value": 7 }]),
            json!([{ "name": "sides", "value": 6 }, { "name": "label", "value": "defend" }]),
            json!({ "sides": 6 }),
        ];
        for r in refused {
            assert!(check_options(&spec, &r).is_err(), "{r}");
        }
    }
}
