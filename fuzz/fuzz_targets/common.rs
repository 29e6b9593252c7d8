//! Invariants and independent references shared by the targets.
#![allow(dead_code)]

use cloudsmith_access_token::jwt::JwtError;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// The service account token the fake token source hands out. Long and
/// distinctive, so finding it in a message cannot be a coincidence.
pub const OIDC: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZnV6eiJ9.b2lkYy1zZWNyZXQtc2lnbmF0dXJlLWZ1eno";

/// Signature part of every access token the fake Cloudsmith hands out.
pub const ACCESS_SIG: &str = "YWNjZXNzLXNlY3JldC1zaWduYXR1cmUtZnV6eg";

/// ESO's ClusterGenerator around a spec, as text (so duplicates, escapes
/// and number spellings of the spec reach the parser unchanged).
pub fn cluster_generator(spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"generators.external-secrets.io/v1alpha1","kind":"ClusterGenerator","spec":{{"kind":"CloudsmithAccessToken","generator":{{"cloudsmithAccessTokenSpec":{spec}}}}}}}"#
    )
}

/// The `CloudsmithAccessToken` resource around a spec, as text.
pub fn resource(spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"generators.external-secrets.io/v1alpha1","kind":"CloudsmithAccessToken","metadata":{{"name":"t"}},"spec":{spec}}}"#
    )
}

/// A message a host logs must stay on one line, or it could forge log lines.
pub fn assert_one_line(what: &str, msg: &str) {
    assert!(
        !msg.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']),
        "{what} is not one line: {msg:?}"
    );
}

pub fn assert_no_secret(what: &str, text: &str, secret: &str) {
    assert!(!text.contains(secret), "{what} shows a secret: {text:?}");
}

/// Splices `secret` into `bytes` at a position chosen by the input, so bodies
/// and messages that echo the request get exercised.
pub fn splice(bytes: &[u8], at: u16, secret: &str) -> Vec<u8> {
    let at = at as usize % (bytes.len() + 1);
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(secret.as_bytes());
    out.extend_from_slice(&bytes[at..]);
    out
}

/// Kubernetes' RFC 1123 label, written independently of the crate.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The top-level members of a JSON document, in order and with duplicates
/// (which `serde_json::Value` would silently collapse): `Ok(None)` for a
/// valid document that is not an object. Only the members named in `keys`
/// are read as `V`; the others are skipped the way serde skips unknown
/// fields (so a number beyond f64 there is not an error, as it is not for
/// the crate).
pub fn members<V: DeserializeOwned>(bytes: &[u8], keys: &[&str]) -> Result<MemberList<V>, serde_json::Error> {
    members_where(bytes, &|k| keys.contains(&k))
}

/// [`members`], reading as `V` the members whose name `wanted` accepts.
pub fn members_where<V: DeserializeOwned>(
    bytes: &[u8],
    wanted: &dyn Fn(&str) -> bool,
) -> Result<MemberList<V>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let out = Members::<V> {
        wanted,
        _v: PhantomData,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// The values of every member named `key`.
pub fn all<'a, V>(members: &'a [(String, Option<V>)], key: &str) -> Vec<&'a V> {
    members
        .iter()
        .filter(|(k, _)| k == key)
        .filter_map(|(_, v)| v.as_ref())
        .collect()
}

struct Members<'a, V> {
    wanted: &'a dyn Fn(&str) -> bool,
    _v: PhantomData<V>,
}

type MemberList<V> = Option<Vec<(String, Option<V>)>>;

impl<'de, V: DeserializeOwned> DeserializeSeed<'de> for Members<'_, V> {
    type Value = MemberList<V>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, V: DeserializeOwned> Visitor<'de> for Members<'_, V> {
    type Value = MemberList<V>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = if (self.wanted)(&k) {
                Some(map.next_value::<V>()?)
            } else {
                map.next_value::<IgnoredAny>()?;
                None
            };
            out.push((k, v));
        }
        Ok(Some(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// RFC 8259's number grammar, written out.
pub fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)` for a finite `v > 0`, computed
/// without `Display`'s shortest-digits algorithm: for 1, 2, ... significant
/// digits, take the correctly rounded decimal (`{:.*e}`, exact) and its two
/// neighbours, and keep the first that reads back (`str::parse`, correctly
/// rounded) as `v`. The neighbours matter where the float's rounding
/// interval is lopsided (at powers of two) or the digits cross a decade.
pub fn go_format_float(v: f64) -> String {
    assert!(v.is_finite() && v > 0.0, "{v}");
    for prec in 0..17usize {
        let sci = format!("{:.*e}", prec, v);
        let (mantissa, exp) = sci.split_once('e').unwrap();
        let exp: i32 = exp.parse().unwrap();
        let n: u64 = mantissa.replace('.', "").parse().unwrap();
        let scale = exp - prec as i32;
        let ten_p = 10u64.pow(prec as u32);
        // The decimal just below n at the same number of digits: across a
        // decade that is 99..9 one place further right.
        let below = if n == ten_p {
            (10 * ten_p - 1, scale - 1)
        } else {
            (n - 1, scale)
        };
        for (digits, scale) in [(n, scale), below, (n + 1, scale)] {
            if format!("{digits}e{scale}").parse::<f64>().unwrap().to_bits() == v.to_bits() {
                return plain_decimal(digits, scale);
            }
        }
    }
    // 17 significant digits always round-trip.
    unreachable!("no decimal reads back as {v:e}")
}

/// `digits × 10^scale` written out without an exponent or trailing zeros.
fn plain_decimal(mut digits: u64, mut scale: i32) -> String {
    while digits != 0 && digits.is_multiple_of(10) {
        digits /= 10;
        scale += 1;
    }
    let d = digits.to_string();
    if scale >= 0 {
        return format!("{d}{}", "0".repeat(scale as usize));
    }
    let point = d.len() as i32 + scale;
    if point > 0 {
        format!("{}.{}", &d[..point as usize], &d[point as usize..])
    } else {
        format!("0.{}{d}", "0".repeat((-point) as usize))
    }
}

/// Whether `got` is the expiry `want`, byte for byte: Go's rounding of an exact
/// tie to the even digit included (`{:.*e}` rounds a tie to even, as Go's
/// FormatFloat does, so the reference gives Go's digits there too).
pub fn expiry_matches(got: &Result<String, JwtError>, want: &Result<String, JwtError>) -> bool {
    got == want
}

/// The `exp` range the crate accepts (outside it the decimal runs to
/// hundreds of digits; the crate refuses it, ESO would print it).
const EXP_MIN: f64 = 1e-30;
const EXP_MAX: f64 = 1e30;

/// What `jwt::expiry` must give for an `exp` claim written as the JSON
/// number `literal`: the float64 nearest it (Rust's correctly rounded
/// parser, the one Go's matches), formatted as Go does.
pub fn expect_exp_literal(literal: &str) -> Result<String, JwtError> {
    assert!(is_json_number(literal), "{literal:?}");
    let v: f64 = literal.parse().unwrap();
    expect_exp_value(v)
}

fn expect_exp_value(v: f64) -> Result<String, JwtError> {
    if v.is_infinite() {
        // Beyond float64: serde_json (and Go's decoder) refuse the document.
        Err(JwtError::PayloadNotJson)
    } else if v.is_nan() || v <= 0.0 {
        Err(JwtError::ExpNotNumeric)
    } else if !(EXP_MIN..=EXP_MAX).contains(&v) {
        Err(JwtError::ExpOutOfRange)
    } else {
        Ok(go_format_float(v))
    }
}

/// What `jwt::expiry` must give for a token whose payload decodes to
/// `payload`. The payload's JSON is read by serde_json (there is no other
/// JSON reader here), so an `exp` with a fraction or beyond u64 only tests
/// the formatting and the claim's shape; [`expect_exp_literal`] tests the
/// parse.
pub fn expect_payload(payload: &[u8]) -> Result<String, JwtError> {
    let members = match members::<Shape>(payload, &["exp"]) {
        Ok(Some(m)) => m,
        Ok(None) | Err(_) => return Err(JwtError::PayloadNotJson),
    };
    // A claim given twice counts the last time, as in the Go map ESO decodes into.
    match all(&members, "exp").last() {
        None | Some(Shape::Null) => Err(JwtError::MissingExp),
        Some(Shape::Number(v)) => expect_exp_value(*v),
        Some(_) => Err(JwtError::ExpNotNumeric),
    }
}

/// A JSON value as far as a claim's type goes; what is inside a list or an
/// object is skipped, not read (serde skips it without converting numbers).
#[derive(Debug)]
pub enum Shape {
    Null,
    /// Integers as `as` rounds them to f64 (what Go's decoder does too).
    Number(f64),
    Other,
}

impl<'de> serde::Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Shape::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Shape, E> {
        Ok(Shape::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Shape, E> {
        Ok(Shape::Number(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Shape, E> {
        Ok(Shape::Number(v))
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Null)
    }
}
