//! Making untrusted text safe to put in a one-line error message.

use alloc::string::String;

/// What replaces a secret found in text bound for an error.
pub const REDACTED: &str = "[redacted]";

/// Folds `text` onto one line (control characters become spaces, runs of
/// spaces collapse) and cuts it to at most `max` characters, marking a cut
/// with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = false;
    for c in text
        .trim_matches(|c: char| c.is_whitespace() || c.is_control())
        .chars()
    {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if count == max {
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Replaces every occurrence of each non-empty `secret` in `text`.
///
/// Error bodies come from a server we do not control: one that echoes the
/// request would otherwise put the OIDC token into an error message.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = String::from(text);
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        if out.contains(*secret) {
            out = out.replace(*secret, REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_folds_controls_and_collapses_spaces() {
        assert_eq!(one_line("a\n\r\tb   c", 50), "a b c");
    }

    #[test]
    fn one_line_cuts_at_max_chars_on_a_char_boundary() {
        assert_eq!(one_line("ééééé", 3), "ééé…");
        assert_eq!(one_line("abc", 3), "abc");
    }

    #[test]
    fn redact_replaces_each_secret_everywhere() {
        let text = "token eyJsecretvalue and again eyJsecretvalue";
        assert_eq!(
            redact(text, &["eyJsecretvalue"]),
            "token [redacted] and again [redacted]"
        );
    }

    #[test]
    fn redact_ignores_short_or_empty_secrets() {
        // Redacting a one-letter "secret" would mangle every message.
        assert_eq!(redact("a b c", &["", "a"]), "a b c");
    }
}
