//! `sluice new NAME --lang rust|python|js`: each scaffold builds with its one
//! `make` target into NAME.wasm, passes `sluice check`, and handles an event
//! under `sluice invoke` (log, JSON publish; bad JSON is a permanent error).

use std::path::Path;
use std::process::Output;

use sluice_e2e::{repo_root, sluice_command};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice-e2e-host");

fn run(cmd: &mut std::process::Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scaffold_builds_checks_and_invokes(lang: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(format!("my-{lang}-plugin"));
    let name = format!("orders-{lang}");
    run(
        sluice_command(SLUICE)
            .env("SLUICE_ROOT", repo_root())
            .args(["new", &name, "--lang", lang, "--dir"])
            .arg(&dir),
        "sluice new",
    );
    let mut make = std::process::Command::new("make");
    make.arg("-C").arg(&dir);
    if lang == "rust" {
        // Share compiled dependencies with the other Rust plugin builds.
        make.env(
            "CARGO_TARGET_DIR",
            repo_root().join("plugins/target/scaffold"),
        );
    }
    run(&mut make, "make (the scaffold's build)");
    let wasm = dir.join(format!("{name}.wasm"));
    assert!(wasm.is_file(), "the build yields {}", wasm.display());

    let check = run(
        sluice_command(SLUICE).arg("check").arg(&wasm),
        "sluice check",
    );
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        // Rust scaffolds use the SDK's contract (0.2.0), Python and JS the
        // 0.1.0 WIT their SDKs are built against: both are served.
        text.contains("ok:") && text.contains("contract: sluice:plugin@0."),
        "{text}"
    );

    let invoke = |data: &str| {
        sluice_command(SLUICE)
            .arg("invoke")
            .arg(&wasm)
            .args(["--subject", &format!("{name}.in"), "--data", data])
            .output()
            .unwrap()
    };
    let ok = invoke(r#"{"b":1,"a":"x"}"#);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(text.contains("outcome: ok"), "{text}");
    assert!(
        text.contains(&format!("{name} got an event on {name}.in")),
        "the handler's log: {text}"
    );
    assert!(
        text.contains(&format!("{name}.in.seen")) && text.contains(r#"{"a":"x","b":1}"#),
        "the JSON publish, granted by the scaffold's manifest: {text}"
    );
    let bad = invoke("not json");
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains("outcome: failed (permanent): payload is not valid JSON"),
        "{text}"
    );
    assert!(Path::new(&dir.join(format!("{name}.toml"))).is_file());
}

#[test]
fn a_rust_scaffold_builds_checks_and_invokes() {
    scaffold_builds_checks_and_invokes("rust");
}

#[test]
fn a_python_scaffold_builds_checks_and_invokes() {
    scaffold_builds_checks_and_invokes("python");
}

#[test]
fn a_js_scaffold_builds_checks_and_invokes() {
    scaffold_builds_checks_and_invokes("js");
}
