//! Docker's rules for registry credentials, as tables where there are cases.

use std::cell::RefCell;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Instant;

use base64::Engine as _;

use super::config::config_path;
use super::exec::answer;
use super::*;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn basic(username: &str, password: &str) -> Login {
    Login::Basic {
        username: username.into(),
        password: Secret::new(password),
    }
}

/// A file with one `auths` entry for `key`.
fn with_key(key: &str, entry: &str) -> DockerConfigFile {
    let text = format!(
        r#"{{"auths": {{{}: {entry}}}}}"#,
        serde_json::to_string(key).unwrap()
    );
    DockerConfigFile::from_json(&text).unwrap()
}

/// Helpers that must not run.
struct NoHelpers;
impl CredentialHelpers for NoHelpers {
    fn get(&self, helper: &str, server: &str) -> Result<Option<(String, Secret)>, AuthError> {
        panic!("helper {helper} ran for {server}")
    }
}

/// A fake helper's answer: user and secret, none, or an error.
type FakeAnswer = Result<Option<(&'static str, &'static str)>, &'static str>;

/// Answers from a table of (helper, server, answer), and records each call.
#[derive(Default)]
struct FakeHelpers {
    answers: Vec<(&'static str, &'static str, FakeAnswer)>,
    calls: RefCell<Vec<(String, String)>>,
}
impl CredentialHelpers for FakeHelpers {
    fn get(&self, helper: &str, server: &str) -> Result<Option<(String, Secret)>, AuthError> {
        self.calls.borrow_mut().push((helper.into(), server.into()));
        let (_, _, answer) = self
            .answers
            .iter()
            .find(|(h, s, _)| *h == helper && *s == server)
            .unwrap_or_else(|| panic!("no answer for {helper} {server}"));
        answer
            .map(|found| found.map(|(u, s)| (u.to_string(), Secret::new(s))))
            .map_err(|e| AuthError::Helper(e.to_string()))
    }
}

#[test]
fn docker_hub_has_one_key() {
    for (registry, key) in [
        ("docker.io", DOCKER_HUB_KEY),
        ("index.docker.io", DOCKER_HUB_KEY),
        ("registry-1.docker.io", "registry-1.docker.io"),
        ("Docker.io", "Docker.io"),
        ("ghcr.io", "ghcr.io"),
        ("localhost:5000", "localhost:5000"),
    ] {
        assert_eq!(auth_key(registry), key, "{registry}");
    }
}

/// Every row is what docker/cli's ConvertToHostname answers (checked by running a copy
/// of it).
#[test]
fn keys_convert_to_hosts_as_docker_converts_them() {
    for (key, host) in [
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("https://ghcr.io", "ghcr.io"),
        ("https://ghcr.io/v2/", "ghcr.io"),
        ("http://localhost:5000", "localhost:5000"),
        ("http://localhost:5000/v2/", "localhost:5000"),
        ("https://Registry.Example.COM/", "Registry.Example.COM"),
        ("https://user:pw@host.example:8443/x", "host.example:8443"),
        ("https://host.example:443", "host.example:443"),
        ("https://host.example:/", "host.example"),
        ("https://host.example?x=1", "host.example"),
        ("https://host.example#frag", "host.example"),
        ("https://[::1]:5000/v2/", "[::1]:5000"),
        ("https://[::1]/v2/", "::1"),
        ("https://::1:5000/v2/", "[::1]:5000"),
        // Go brackets what it takes for an address and a port.
        ("https://::1/v2/", "[:]:1"),
        ("https://host.example:abc/", "host.example:abc"),
        ("https://bad host/", "bad host"),
        ("https:///v2/", "https:"),
        ("https://:5000/", ":5000"),
        ("1https://host.example/", "host.example"),
        ("ghcr.io", "ghcr.io"),
        ("ghcr.io/v2/", "ghcr.io"),
        ("localhost:5000/v2", "localhost:5000"),
        ("host.example?x", "host.example?x"),
        ("", ""),
    ] {
        assert_eq!(convert_to_hostname(key), host, "{key:?}");
    }
}

#[test]
fn auths_keys_match_in_every_form_docker_accepts() {
    let entry = format!(r#"{{"auth": "{}"}}"#, b64("alice:pw"));
    let alice = basic("alice", "pw");
    for (key, registry, found) in [
        ("ghcr.io", "ghcr.io", true),
        ("https://ghcr.io", "ghcr.io", true),
        ("https://ghcr.io/v2/", "ghcr.io", true),
        ("http://ghcr.io/v1/", "ghcr.io", true),
        ("ghcr.io/v2/", "ghcr.io", true),
        ("https://someone@ghcr.io/", "ghcr.io", true),
        ("localhost:5000", "localhost:5000", true),
        ("http://localhost:5000/v2/", "localhost:5000", true),
        ("http://[::1]:5000/v2/", "[::1]:5000", true),
        ("https://index.docker.io/v1/", "docker.io", true),
        ("https://index.docker.io/v1/", "index.docker.io", true),
        // Hub's key is a URL: only that exact key matches it.
        ("docker.io", "docker.io", false),
        ("index.docker.io", "docker.io", false),
        ("https://index.docker.io/v2/", "docker.io", false),
        ("https://registry-1.docker.io/v2/", "docker.io", false),
        // Hosts are compared as written: no lowercasing, no default port.
        ("GHCR.io", "ghcr.io", false),
        ("ghcr.io:443", "ghcr.io", false),
        ("https://ghcr.io:443", "ghcr.io", false),
        ("localhost:5000", "localhost", false),
        ("localhost", "localhost:5000", false),
        ("ghcr.io.evil.example", "ghcr.io", false),
    ] {
        let login = with_key(key, &entry).login_for(registry, &NoHelpers).unwrap();
        let expected = if found { alice.clone() } else { Login::Anonymous };
        assert_eq!(login, expected, "key {key:?}, registry {registry:?}");
    }
}

#[test]
fn the_exact_key_wins_then_the_first_converted_key() {
    let config = DockerConfigFile::from_json(&format!(
        r#"{{"auths": {{
                "https://ghcr.io/v2/": {{"auth": "{}"}},
                "http://ghcr.io": {{"auth": "{}"}},
                "ghcr.io": {{"auth": "{}"}},
                "https://quay.io/v2/": {{"auth": "{}"}},
                "http://quay.io": {{"auth": "{}"}},
                "https://empty.example": {{"auth": "{}"}},
                "empty.example": null
            }}}}"#,
        b64("converted:1"),
        b64("converted:2"),
        b64("exact:3"),
        b64("quay:4"),
        b64("quay:5"),
        b64("converted:6"),
    ))
    .unwrap();
    assert_eq!(
        config.login_for("ghcr.io", &NoHelpers).unwrap(),
        basic("exact", "3")
    );
    assert_eq!(
        config.login_for("quay.io", &NoHelpers).unwrap(),
        basic("quay", "5"),
        "the first in byte order: `http:` before `https:`"
    );
    assert_eq!(
        config.login_for("empty.example", &NoHelpers).unwrap(),
        Login::Anonymous,
        "an exact entry, even empty, hides the converted ones"
    );
}

#[test]
fn auth_decodes_as_docker_decodes_it() {
    for (auth, expected) in [
        (b64("alice:pw"), Ok(basic("alice", "pw"))),
        (b64("alice:pa:ss"), Ok(basic("alice", "pa:ss"))),
        (b64("alice:pw\0\0"), Ok(basic("alice", "pw"))),
        (b64("alice:\0pw"), Ok(basic("alice", "pw"))),
        // Go skips newlines, and is not strict about the unused bits.
        (
            format!("{}\r\n{}", &b64("alice:pw")[..4], &b64("alice:pw")[4..]),
            Ok(basic("alice", "pw")),
        ),
        ("YWxpY2U6cGR=".into(), Ok(basic("alice", "pd"))),
        // An empty password is no basic login for Docker's registry client.
        (b64("alice:"), Ok(Login::Anonymous)),
        (b64(":pw"), Err("`auth` is not base64 of USER:PASSWORD")),
        (b64("alice"), Err("`auth` is not base64 of USER:PASSWORD")),
        ("YWxpY2U6cHc".into(), Err("`auth` is not base64")),
        ("!!!!".into(), Err("`auth` is not base64")),
        ("YWxpY2U6cHc=YQ==".into(), Err("`auth` is not base64")),
        ("_-__".into(), Err("`auth` is not base64")),
        ("/w==".into(), Err("`auth` is not base64 of UTF-8 text")),
    ] {
        let text = format!(
            r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
            auth.escape_default()
        );
        let result =
            DockerConfigFile::from_json(&text).map(|c| c.login_for("r.example", &NoHelpers).unwrap());
        let expected = expected.map_err(|e| AuthError::Config(format!("auths[\"r.example\"]: {e}")));
        assert_eq!(result, expected, "{auth:?}");
    }
}

#[test]
fn auth_replaces_the_user_and_password_fields_which_serve_alone() {
    let both = format!(
        r#"{{"username": "u", "password": "p", "auth": "{}"}}"#,
        b64("alice:pw")
    );
    assert_eq!(
        with_key("r.example", &both)
            .login_for("r.example", &NoHelpers)
            .unwrap(),
        basic("alice", "pw")
    );
    let fields = r#"{"username": "u", "password": "p", "auth": ""}"#;
    assert_eq!(
        with_key("r.example", fields)
            .login_for("r.example", &NoHelpers)
            .unwrap(),
        basic("u", "p")
    );
    let no_password = r#"{"username": "u"}"#;
    assert_eq!(
        with_key("r.example", no_password)
            .login_for("r.example", &NoHelpers)
            .unwrap(),
        Login::Anonymous
    );
}

#[test]
fn tokens_beat_a_password() {
    let acr = format!(
        r#"{{"auth": "{}", "identitytoken": "refresh-me"}}"#,
        b64("00000000-0000-0000-0000-000000000000:")
    );
    assert_eq!(
        with_key("acr.example", &acr)
            .login_for("acr.example", &NoHelpers)
            .unwrap(),
        Login::IdentityToken(Secret::new("refresh-me"))
    );
    let registry = format!(
        r#"{{"auth": "{}", "identitytoken": "x", "registrytoken": "bearer-me"}}"#,
        b64("u:p")
    );
    assert_eq!(
        with_key("r.example", &registry)
            .login_for("r.example", &NoHelpers)
            .unwrap(),
        Login::RegistryToken(Secret::new("bearer-me"))
    );
}

#[test]
fn field_names_match_ignoring_case_as_in_go() {
    let text = format!(
        r#"{{"Auths": {{"r.example": {{"Auth": "{}"}}, "t.example": {{"IdentityToken": "t"}}}},
                "CredHelpers": {{"h.example": "h"}}}}"#,
        b64("alice:pw")
    );
    let config = DockerConfigFile::from_json(&text).unwrap();
    assert_eq!(
        config.login_for("r.example", &NoHelpers).unwrap(),
        basic("alice", "pw")
    );
    assert_eq!(
        config.login_for("t.example", &NoHelpers).unwrap(),
        Login::IdentityToken(Secret::new("t"))
    );
    assert_eq!(config.helper_for("h.example"), Some("h"));
}

#[test]
fn files_parse_as_go_decodes_them() {
    for empty in [
        "",
        "  \n",
        "null",
        "{}",
        r#"{"auths": null, "credHelpers": null, "credsStore": null}"#,
    ] {
        let config = DockerConfigFile::from_json(empty).unwrap();
        assert!(!config.contains_auth(), "{empty:?}");
    }
    // Decode reads one value; what follows is never looked at.
    let config = DockerConfigFile::from_json(r#"{"credsStore": "pass"} trailing {"#).unwrap();
    assert_eq!(config.helper_for("ghcr.io"), Some("pass"));
    // Settings other than credentials are not read.
    assert!(DockerConfigFile::from_json(r#"{"psFormat": 5, "proxies": []}"#).is_ok());
    for (text, error) in [
        ("{", "not JSON (EOF while parsing an object at line 1 column 1)"),
        ("[]", "not a JSON object"),
        (r#"{"auths": []}"#, "`auths` is not an object"),
        (r#"{"auths": {"r": "x"}}"#, "auths[\"r\"]: is not an object"),
        (
            r#"{"auths": {"r": {"password": 5}}}"#,
            "auths[\"r\"]: `password` is not a string",
        ),
        (r#"{"credsStore": true}"#, "`credsStore` is not a string"),
        (
            r#"{"credHelpers": {"r": 1}}"#,
            "credHelpers[\"r\"] is not a string",
        ),
    ] {
        assert_eq!(
            DockerConfigFile::from_json(text).unwrap_err(),
            AuthError::Config(error.into()),
            "{text}"
        );
    }
}

#[test]
fn cred_helpers_beat_creds_store_which_beats_auths() {
    let config = DockerConfigFile::from_json(&format!(
        r#"{{"auths": {{"ghcr.io": {{"auth": "{a}"}}, "quay.io": {{"auth": "{a}"}},
                "file.example": {{"auth": "{a}"}}, "https://index.docker.io/v1/": {{"auth": "{a}"}}}},
                "credHelpers": {{"ghcr.io": "gh", "file.example": "", "docker.io": "never",
                                 "https://index.docker.io/v1/": "hub"}},
                "credsStore": "desktop"}}"#,
        a = b64("from:file")
    ))
    .unwrap();
    assert_eq!(config.helper_for("ghcr.io"), Some("gh"));
    assert_eq!(config.helper_for("quay.io"), Some("desktop"));
    assert_eq!(
        config.helper_for("file.example"),
        None,
        "an empty credHelpers value is the file"
    );
    assert_eq!(
        config.helper_for("docker.io"),
        Some("hub"),
        "Hub's helper is keyed by its URL"
    );
    assert_eq!(config.helper_for("index.docker.io"), Some("hub"));
    let helpers = FakeHelpers {
        answers: vec![
            ("gh", "ghcr.io", Ok(Some(("gh-user", "gh-token")))),
            ("desktop", "quay.io", Ok(None)),
            ("hub", DOCKER_HUB_KEY, Ok(Some((TOKEN_USERNAME, "hub-refresh")))),
        ],
        ..FakeHelpers::default()
    };
    assert_eq!(
        config.login_for("ghcr.io", &helpers).unwrap(),
        basic("gh-user", "gh-token")
    );
    assert_eq!(
        config.login_for("quay.io", &helpers).unwrap(),
        Login::Anonymous,
        "the store has none: the file's password is not used"
    );
    assert_eq!(
        config.login_for("file.example", &helpers).unwrap(),
        basic("from", "file")
    );
    assert_eq!(
        config.login_for("docker.io", &helpers).unwrap(),
        Login::IdentityToken(Secret::new("hub-refresh"))
    );
    assert_eq!(
        *helpers.calls.borrow(),
        [
            ("gh".to_string(), "ghcr.io".to_string()),
            ("desktop".into(), "quay.io".into()),
            ("hub".into(), DOCKER_HUB_KEY.into()),
        ],
        "each helper is asked for the key, Hub's as its URL"
    );
}

#[test]
fn a_helper_keeps_the_files_registry_token_and_its_errors_are_the_answer() {
    let config = DockerConfigFile::from_json(
        r#"{"auths": {"r.example": {"registrytoken": "kept"}}, "credsStore": "s"}"#,
    )
    .unwrap();
    let helpers = FakeHelpers {
        answers: vec![
            ("s", "r.example", Ok(Some(("u", "p")))),
            (
                "s",
                "broken.example",
                Err("credential helper docker-credential-s for broken.example: boom"),
            ),
        ],
        ..FakeHelpers::default()
    };
    assert_eq!(
        config.login_for("r.example", &helpers).unwrap(),
        Login::RegistryToken(Secret::new("kept"))
    );
    assert_eq!(
        config.login_for("broken.example", &helpers).unwrap_err(),
        AuthError::Helper("credential helper docker-credential-s for broken.example: boom".into())
    );
    assert!(config.login_for("", &helpers).is_err());
}

#[test]
fn docker_auth_config_answers_first_for_its_exact_keys() {
    let mut config = DockerConfigFile::from_json(r#"{"credsStore": "s"}"#).unwrap();
    let value = format!(
        r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}, "https://index.docker.io/v1/": {{"auth": "{}"}},
                            "https://quay.io": {{"auth": "{}"}}}}}}"#,
        b64("env:1"),
        b64("hub:2"),
        b64("quay:3")
    );
    config.apply_auth_config_env(&value).unwrap();
    assert_eq!(
        config.login_for("ghcr.io", &NoHelpers).unwrap(),
        basic("env", "1")
    );
    assert_eq!(
        config.login_for("docker.io", &NoHelpers).unwrap(),
        basic("hub", "2")
    );
    let helpers = FakeHelpers {
        answers: vec![("s", "quay.io", Ok(None))],
        ..FakeHelpers::default()
    };
    assert_eq!(
        config.login_for("quay.io", &helpers).unwrap(),
        Login::Anonymous,
        "the variable matches keys exactly, with no conversion"
    );
    assert!(!DockerConfigFile::default().contains_auth());
}

#[test]
fn docker_auth_config_is_strict_and_an_error_changes_nothing() {
    let good = format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#, b64("env:1"));
    for (value, error) in [
        (
            r#"{"auths": {}, "credsStore": "x"}"#.to_string(),
            "unknown field \"credsStore\"",
        ),
        (
            r#"{"auths": {"r": {"username": "u"}}}"#.into(),
            "auths[\"r\"]: unknown field \"username\"",
        ),
        (r#"{"auths": {"r": {}}}"#.into(), "auths[\"r\"]: has no `auth`"),
        (r#"{"auths": {"r": null}}"#.into(), "auths[\"r\"]: has no `auth`"),
        (
            r#"{"auths": {"r": {"auth": "%%"}}}"#.into(),
            "auths[\"r\"]: `auth` is not base64",
        ),
        (format!("{good} {good}"), "more than one JSON object"),
        ("[1]".into(), "not a JSON object"),
        (
            "{".into(),
            "not JSON (EOF while parsing an object at line 1 column 1)",
        ),
    ] {
        let mut config = DockerConfigFile::default();
        config.apply_auth_config_env(&good).unwrap();
        let err = config.apply_auth_config_env(&value).unwrap_err();
        assert_eq!(
            err,
            AuthError::Config(format!("DOCKER_AUTH_CONFIG: {error}")),
            "{value}"
        );
        assert_eq!(
            config.login_for("ghcr.io", &NoHelpers).unwrap(),
            basic("env", "1")
        );
    }
    let mut config = DockerConfigFile::default();
    for fine in ["", "  ", "null", r#"{"AUTHS": null}"#, r#"{"auths": {}} }"#] {
        config.apply_auth_config_env(fine).unwrap();
    }
    let secret = format!(
        r#"{{"auths": {{"r": {{"auth": "{}", "x": 1}}}}}}"#,
        b64("u:hunter2-secret")
    );
    let err = config.apply_auth_config_env(&secret).unwrap_err().to_string();
    assert!(
        !err.contains("hunter2") && !err.contains(&b64("u:hunter2-secret")),
        "{err}"
    );
}

#[test]
fn the_config_path_is_docker_config_else_home() {
    let vars = |pairs: &'static [(&str, &str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    assert_eq!(
        config_path(vars(&[("DOCKER_CONFIG", "/etc/d"), ("HOME", "/home/u")])),
        Some(PathBuf::from("/etc/d/config.json"))
    );
    assert_eq!(
        config_path(vars(&[("DOCKER_CONFIG", ""), ("HOME", "/home/u")])),
        Some(PathBuf::from("/home/u/.docker/config.json"))
    );
    assert_eq!(config_path(vars(&[("HOME", "")])), None);
}

#[test]
fn files_are_read_bounded_and_errors_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    assert_eq!(
        DockerConfigFile::load_if_present(&path).unwrap().map(|_| ()),
        None
    );
    assert!(DockerConfigFile::load(&path)
        .unwrap_err()
        .to_string()
        .starts_with(&path.display().to_string()));
    std::fs::write(
        &path,
        format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#, b64("a:b")),
    )
    .unwrap();
    let config = DockerConfigFile::load_if_present(&path).unwrap().unwrap();
    assert_eq!(config.login_for("ghcr.io", &NoHelpers).unwrap(), basic("a", "b"));
    std::fs::write(&path, "not json, password=hunter2").unwrap();
    let err = DockerConfigFile::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{}: not JSON (expected ident at line 1 column 2)", path.display())
    );
    std::fs::write(&path, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
    let err = DockerConfigFile::load(&path).unwrap_err().to_string();
    assert!(err.contains("larger than"), "{err}");
    let err = DockerConfigFile::load_if_present(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&dir.path().display().to_string()),
        "a directory: {err}"
    );
}

#[test]
fn logins_never_print_secrets() {
    let login = basic("alice", "hunter2-secret");
    let shown = format!("{login} {login:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(login.to_string(), "user alice");
    assert_eq!(
        Login::IdentityToken(Secret::new("x")).to_string(),
        "an identity token"
    );
}

/// ExecHelpers against real programs: shell scripts on a search path of their own.
#[cfg(unix)]
mod exec {
    use super::*;

    /// The fake helper: answers by the server on its stdin.
    const FAKE_HELPER: &str = r#"#!/bin/sh
[ "$1" = get ] || { echo "unexpected arguments: $*"; exit 2; }
server=$(cat)
case "$server" in
found.example) printf '{"ServerURL":"%s","Username":"alice","Secret":"s3cret-value"}' "$server" ;;
https://index.docker.io/v1/) printf '{"Username":"<token>","Secret":"refresh"}\n' ;;
missing.example) echo "credentials not found in native keychain"; exit 1 ;;
failing.example) echo "error getting credentials - keychain is locked"; exit 3 ;;
jwt.example) echo "rejected eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"; exit 1 ;;
json.example) printf '{"Username":"u","Secret":"s3cret-value"}'; exit 1 ;;
hanging.example) exec sleep 10 ;;
garbage.example) echo "password=s3cret-value" ;;
text.example) echo '"s3cret-value"' ;;
empty.example) ;;
env.example) printf '{"Username":"%s","Secret":"s"}' "${FAKE_VAR:-unset}" ;;
*) echo "unknown server $server"; exit 4 ;;
esac
"#;

    /// Writing an executable while another thread forks can make its exec fail (ETXTBSY:
    /// the forked child holds the file open for writing until it execs). Scripts are
    /// written under the write lock; helpers run under the read lock.
    static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

    /// A directory holding `docker-credential-fake` (and a non-executable
    /// `docker-credential-noexec`), for the search path.
    fn helper_dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt as _;
        let _writing = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [
            ("docker-credential-fake", 0o755),
            ("docker-credential-noexec", 0o644),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, FAKE_HELPER).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        dir
    }

    fn exec_get(exec: &ExecHelpers, helper: &str, server: &str) -> Result<Option<(String, Secret)>, String> {
        let _running = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
        exec.get(helper, server).map_err(|e| e.to_string())
    }

    fn exec_in(dir: &tempfile::TempDir) -> ExecHelpers {
        let path = std::env::join_paths(["/nonexistent-dir".as_ref(), dir.path()]).unwrap();
        ExecHelpers::new(path).with_timeout(Duration::from_secs(5))
    }

    #[test]
    fn a_real_helper_answers_on_the_protocol() {
        let dir = helper_dir();
        let exec = exec_in(&dir);
        assert_eq!(exec.find("fake"), Some(dir.path().join("docker-credential-fake")));
        assert_eq!(
            exec_get(&exec, "fake", "found.example").unwrap(),
            Some(("alice".to_string(), Secret::new("s3cret-value")))
        );
        // Through a config file, for Docker Hub's key and its identity token.
        let config = DockerConfigFile::from_json(r#"{"credsStore": "fake"}"#).unwrap();
        let _running = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
        assert_eq!(
            config.login_for("docker.io", &exec).unwrap(),
            Login::IdentityToken(Secret::new("refresh"))
        );
        assert_eq!(
            config.login_for("missing.example", &exec).unwrap(),
            Login::Anonymous
        );
    }

    #[test]
    fn a_variable_can_be_kept_from_one_helper() {
        // The test process's own environment is what helpers inherit: set a variable
        // only this test reads.
        std::env::set_var("FAKE_VAR", "inherited");
        let dir = helper_dir();
        let user = |exec: &ExecHelpers| exec_get(exec, "fake", "env.example").unwrap().unwrap().0;
        assert_eq!(user(&exec_in(&dir)), "inherited");
        assert_eq!(user(&exec_in(&dir).without_env_for("fake", "FAKE_VAR")), "unset");
        assert_eq!(
            user(&exec_in(&dir).without_env_for("other", "FAKE_VAR")),
            "inherited"
        );
    }

    #[test]
    fn a_real_helper_without_credentials_is_anonymous() {
        let dir = helper_dir();
        assert_eq!(exec_get(&exec_in(&dir), "fake", "missing.example").unwrap(), None);
    }

    #[test]
    fn a_missing_helper_is_named() {
        let dir = helper_dir();
        let exec = exec_in(&dir);
        for helper in ["absent", "noexec", "../fake", ""] {
            let err = exec_get(&exec, helper, "ghcr.io").unwrap_err();
            assert_eq!(
                err,
                format!("credential helper docker-credential-{helper} for ghcr.io: not found on PATH")
            );
        }
        let relative = ExecHelpers::new(format!(":.:{}", "relative/dir"));
        assert_eq!(relative.find("fake"), None);
    }

    #[test]
    fn a_failing_helper_is_an_error_with_its_message_cut_and_redacted() {
        let dir = helper_dir();
        let exec = exec_in(&dir);
        let err = exec_get(&exec, "fake", "failing.example").unwrap_err();
        assert_eq!(
            err,
            "credential helper docker-credential-fake for failing.example: \
                 failed (exit status: 3): error getting credentials - keychain is locked"
        );
        let err = exec_get(&exec, "fake", "jwt.example").unwrap_err();
        assert!(
            err.ends_with("failed (exit status: 1): rejected [redacted]"),
            "{err}"
        );
        let err = exec_get(&exec, "fake", "json.example").unwrap_err();
        assert!(err.ends_with("failed (exit status: 1), printing JSON"), "{err}");
        let err = exec_get(&exec, "fake", "other.example").unwrap_err();
        assert!(
            err.ends_with("failed (exit status: 4): unknown server other.example"),
            "{err}"
        );
    }

    #[test]
    fn a_helper_that_prints_no_credentials_json_is_an_error_that_quotes_nothing() {
        let dir = helper_dir();
        let exec = exec_in(&dir);
        for (server, why) in [
            ("garbage.example", "printed an answer that is not JSON"),
            ("text.example", "printed an answer that is not a JSON object"),
            ("empty.example", "printed nothing"),
        ] {
            let err = exec_get(&exec, "fake", server).unwrap_err();
            assert_eq!(
                err,
                format!("credential helper docker-credential-fake for {server}: {why}")
            );
        }
    }

    #[test]
    fn answers_decode_as_go_decodes_them() {
        use std::os::unix::process::ExitStatusExt as _;
        let ok = ExitStatus::from_raw(0);
        let found = |u: &str, s: &str| Ok(Some((u.to_string(), Secret::new(s))));
        assert_eq!(
            answer(ok, br#"{"username":"u","secret":"s"} more"#),
            found("u", "s")
        );
        assert_eq!(answer(ok, b"null"), found("", ""));
        assert_eq!(answer(ok, br#"{"ServerURL":"x"}"#), found("", ""));
        assert_eq!(
            answer(ok, br#"{"Secret": 5}"#),
            Err("printed a `Secret` that is not a string".into())
        );
        let failed = ExitStatus::from_raw(1 << 8);
        assert_eq!(
            answer(failed, b"  credentials not found in native keychain\n"),
            Ok(None)
        );
        assert_eq!(
            answer(ok, b"credentials not found in native keychain"),
            Err("printed an answer that is not JSON".into()),
            "the message counts only with a failure, as in client.go"
        );
    }

    #[test]
    fn a_hanging_helper_is_killed_at_the_timeout() {
        let dir = helper_dir();
        let exec = exec_in(&dir).with_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let err = exec_get(&exec, "fake", "hanging.example").unwrap_err();
        assert_eq!(
            err,
            "credential helper docker-credential-fake for hanging.example: no answer within 0.5s"
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
    }

    #[test]
    fn a_helper_that_prints_without_end_is_stopped_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _writing = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
            let path = dir.path().join("docker-credential-yes");
            std::fs::write(&path, "#!/bin/sh\nexec yes\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let exec = ExecHelpers::new(dir.path()).with_timeout(Duration::from_secs(5));
        let err = exec_get(&exec, "yes", "ghcr.io").unwrap_err();
        assert_eq!(
            err,
            format!(
                "credential helper docker-credential-yes for ghcr.io: \
                     its output is larger than {MAX_HELPER_OUTPUT_BYTES} bytes"
            )
        );
    }
}
