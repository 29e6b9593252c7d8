//! What the stand-ins' own suites share.

/// Starts `$stand_in` (a stand-in type of this crate) with `$config { tls: true, .. }`
/// and checks that it serves HTTPS on the loopback address; evaluates to the stand-in.
/// A macro: each stand-in has its own config type, and `tls` is a field of each.
macro_rules! https_stand_in {
    ($stand_in:ident, $config:ident) => {{
        let stand_in = $stand_in::start($config {
            tls: true,
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(
            stand_in.url().starts_with("https://127.0.0.1:"),
            "{}",
            stand_in.url()
        );
        stand_in
    }};
}
pub(crate) use https_stand_in;
