//! `weir profile …` and `weir config show`: profiles in WEIR_HOME/profiles.toml, the
//! environment overriding them.

use std::path::Path;
use std::process::{Command, Output};

fn weir(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(args).env("WEIR_HOME", home);
    for v in [
        "WEIR_RESULTS",
        "WEIR_RESULTS_DIR",
        "WEIR_API_URL",
        "WEIR_API_KEY",
        "WEIR_PROFILE",
        "WEIR_LOCAL_CACHE",
        "WEIR_DATABASE_URL",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: Output) -> String {
    assert!(!o.status.success());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setting(home: &Path, env: &[(&str, &str)], key: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(&ok(weir(home, env, &["config", "show", "--json"]))).unwrap();
    (
        v[key]["value"].as_str().unwrap().to_string(),
        v[key]["source"].as_str().unwrap().to_string(),
    )
}

#[test]
fn profiles_set_what_is_in_force_and_the_environment_overrides_them() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let dev_results = h.join("dev-results");
    ok(weir(
        h,
        &[],
        &[
            "profile",
            "create",
            "prod",
            "--api-url",
            "http://prod:4200",
            "--api-key",
            "k3y",
            "--results",
            "s3://team/weir",
        ],
    ));
    ok(weir(
        h,
        &[],
        &["profile", "create", "dev", "--results", dev_results.to_str().unwrap()],
    ));
    let ls = ok(weir(h, &[], &["profile", "ls"]));
    assert!(
        ls.lines().any(|l| l.contains('*') && l.contains("prod")),
        "the first profile is active: {ls}"
    );

    assert_eq!(
        setting(h, &[], "results"),
        ("s3://team/weir".into(), "profile 'prod'".into())
    );
    assert_eq!(
        setting(h, &[], "api_key"),
        ("********".into(), "profile 'prod'".into()),
        "keys are never printed"
    );

    ok(weir(h, &[], &["profile", "use", "dev"]));
    assert_eq!(
        setting(h, &[], "results"),
        (dev_results.display().to_string(), "profile 'dev'".into())
    );
    assert_eq!(setting(h, &[], "api_url").1, "default");
    // The profile is really used: the cache commands open the dev folder.
    let stats = ok(weir(h, &[], &["cache", "stats"]));
    assert!(stats.contains(dev_results.to_str().unwrap()), "{stats}");

    let env = [("WEIR_RESULTS", "/elsewhere")];
    assert_eq!(
        setting(h, &env, "results"),
        ("/elsewhere".into(), "environment (WEIR_RESULTS)".into())
    );
    assert_eq!(setting(h, &[("WEIR_PROFILE", "prod")], "results").1, "profile 'prod'");
}

#[test]
fn profile_mistakes_get_clear_errors_and_change_nothing() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(weir(h, &[], &["profile", "create", "prod", "--results", "/r"]));
    assert!(err(weir(h, &[], &["profile", "use", "staging"])).contains("no profile named 'staging' (profiles: prod)"));
    assert!(err(weir(h, &[], &["profile", "create", "prod"])).contains("already exists"));
    assert!(err(weir(h, &[], &["profile", "create", "my prod"])).contains("is not a profile name"));
    assert!(err(weir(h, &[], &["profile", "create", "x", "--api-url", "ftp://x"])).contains("not an http(s) URL"));
    assert!(err(weir(h, &[("WEIR_PROFILE", "nope")], &["config", "show"])).contains("no profile named 'nope'"));
    assert_eq!(setting(h, &[], "results").0, "/r", "still intact");
    std::fs::write(h.join("profiles.toml"), "active = [").unwrap();
    assert!(err(weir(h, &[], &["config", "show"])).contains("profiles.toml"));
}
