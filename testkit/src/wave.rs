//! Just enough of WAVE (the WebAssembly Value Encoding the wasmtime CLI
//! prints for `--invoke`) for the generator's `generate` result.

use serde_json::{json, Map, Value};

/// A WAVE string literal for `s`.
pub fn string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses one WAVE value into the common JSON form: records become
/// objects, lists and tuples arrays, `none` null, `some(x)` x, `ok(x)` /
/// `err(x)` `{"ok": x}` / `{"err": x}`, and other cases
/// `{"case": name, "value": payload}`.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing text at {}: {text}", p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at {}", c as char, self.i))
        }
    }

    /// Comma-separated items up to `close`, allowing a trailing comma.
    fn seq<T>(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(items);
            }
            items.push(item(self)?);
            if !self.eat(b',') {
                self.expect(close)?;
                return Ok(items);
            }
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek().ok_or("unexpected end")? {
            b'"' => self.string().map(Value::String),
            b'[' => {
                self.i += 1;
                self.seq(b']', Self::value).map(Value::Array)
            }
            b'(' => {
                self.i += 1;
                self.seq(b')', Self::value).map(Value::Array)
            }
            b'{' => {
                self.i += 1;
                let fields = self.seq(b'}', |p| {
                    let name = p.label()?;
                    p.expect(b':')?;
                    Ok((name, p.value()?))
                })?;
                Ok(Value::Object(fields.into_iter().collect::<Map<_, _>>()))
            }
            c if c == b'-' || c.is_ascii_digit() => self.number(),
            _ => {
                let name = self.label()?;
                let payload = if self.eat(b'(') {
                    let mut v = self.seq(b')', Self::value)?;
                    if v.len() != 1 {
                        return Err(format!("case {name} with {} payloads", v.len()));
                    }
                    v.pop()
                } else {
                    None
                };
                Ok(match (name.as_str(), payload) {
                    ("none", None) => Value::Null,
                    ("some", Some(v)) => v,
                    ("ok" | "err", v) => json!({ name: v }),
                    ("true", None) => Value::Bool(true),
                    ("false", None) => Value::Bool(false),
                    (_, v) => json!({"case": name, "value": v}),
                })
            }
        }
    }

    fn label(&mut self) -> Result<String, String> {
        self.ws();
        let start = self.i;
        // `%` escapes a label that is a keyword.
        if self.s.get(self.i) == Some(&b'%') {
            self.i += 1;
        }
        while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'-') {
            self.i += 1;
        }
        let label = std::str::from_utf8(&self.s[start..self.i])
            .unwrap()
            .trim_start_matches('%');
        if label.is_empty() {
            return Err(format!("expected a label at {start}"));
        }
        Ok(label.to_string())
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i] == b'-' || self.s[self.i].is_ascii_digit()) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
        text.parse::<i64>()
            .map(Value::from)
            .map_err(|e| format!("bad number {text}: {e}"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'"' | b'\'' | b'\\' => out.push(e),
                        b'u' => {
                            self.expect(b'{')?;
                            let start = self.i;
                            while self.s.get(self.i).is_some_and(u8::is_ascii_hexdigit) {
                                self.i += 1;
                            }
                            let hex = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                            self.expect(b'}')?;
                            let c = u32::from_str_radix(hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or("bad unicode escape")?;
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        _ => return Err(format!("unknown escape \\{}", e as char)),
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// `generate`'s `ok(list<tuple<string, list<u8>>>)` with each byte list
/// turned into text, the form every host's answer is compared in. Lossless:
/// a value that is not UTF-8 is an error. Anything else is returned as is.
pub fn outputs_as_text(value: Value) -> Result<Value, String> {
    let Some(pairs) = value.get("ok").and_then(Value::as_array) else {
        return Ok(value);
    };
    let mut ok = Vec::new();
    for pair in pairs {
        let bytes: Vec<u8> = pair[1]
            .as_array()
            .ok_or("output value is not a list")?
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()).ok_or("not a byte"))
            .collect::<Result<_, _>>()?;
        let text = String::from_utf8(bytes).map_err(|e| format!("output is not UTF-8: {e}"))?;
        ok.push(json!([pair[0], text]));
    }
    Ok(json!({ "ok": ok }))
}
