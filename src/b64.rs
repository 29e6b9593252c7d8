//! The two base64 flavours the generator needs: standard with padding (ESO's
//! `auth`) and URL-safe without padding (JWT payloads). A dedicated crate
//! would cost several kilobytes of the component's budget for the same work.

use alloc::string::String;
use alloc::vec::Vec;

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding (RFC 4648 §4), as Go's `base64.StdEncoding`.
pub fn encode_standard(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(STANDARD[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// URL-safe base64 (RFC 4648 §5) without padding; trailing `=` is tolerated
/// because some JWT encoders emit it.
pub fn decode_url_safe(input: &str) -> Option<Vec<u8>> {
    let input = input.trim_end_matches('=').as_bytes();
    // A lone trailing character carries fewer than 8 bits: not valid base64.
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be zero, as in canonical encodings.
    if acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_encoding_matches_rfc4648_vectors() {
        let cases: [(&str, &str); 7] = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(encode_standard(plain.as_bytes()), encoded);
        }
        // The standard alphabet's last two symbols are '+' and '/'.
        assert_eq!(encode_standard(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn url_safe_decoding_with_and_without_padding() {
        assert_eq!(decode_url_safe("Zm9vYg").unwrap(), b"foob");
        assert_eq!(decode_url_safe("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(decode_url_safe("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_url_safe("").unwrap(), b"");
    }

    #[test]
    fn url_safe_decoding_rejects_bad_input() {
        for bad in ["Z", "Zm9vY", "Zm+v", "Zm/v", "Zm9v!", "Zh"] {
            assert_eq!(decode_url_safe(bad), None, "{bad}");
        }
    }
}
