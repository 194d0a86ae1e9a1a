//! The effective capability grants of the plugins in the configured plugin
//! folder, as `sluice config check` shows them after the configuration:
//! each manifest's asks (publish, request, state, http) capped by the
//! operator's settings, exactly as `sluice run` would apply them. Printed
//! as TOML comments, so the output still reads back as a config file.
//! Only the manifests are read (no component is compiled); a manifest that
//! cannot be used is named with its error, and the check still succeeds,
//! as `sluice run` would still serve the other plugins.

use std::fmt::Write as _;

use crate::config::Settings;
use crate::limits::SandboxPolicy;
use crate::manifest::Manifest;
use crate::registry::loader::{plugin_files, plugin_name};

/// The grants block for the plugins of `settings.plugins`.
pub fn effective_grants(settings: &Settings) -> String {
    let dir = &settings.plugins;
    let files = match plugin_files(dir) {
        Ok(files) => files,
        Err(e) => return format!("\n# No plugin grants to show: {e}\n"),
    };
    let mut out = format!(
        "\n# Effective grants of the plugins in {} (each manifest's asks, capped by the settings above):\n",
        dir.display()
    );
    if files.is_empty() {
        out.push_str("#   (no plugins)\n");
    }
    for wasm in files {
        let Some(name) = plugin_name(&wasm) else {
            continue;
        };
        match Manifest::load(&wasm.with_extension("toml")) {
            Ok(manifest) => plugin_grants(&mut out, &settings.sandbox, &name, &manifest),
            Err(e) => {
                let _ = writeln!(out, "# [{name}] not loadable: {e}");
            }
        }
    }
    out
}

fn quoted(items: impl IntoIterator<Item = impl std::fmt::Display>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// A subject grant list, with the operator cap that bounds it: the plugin's own
/// `[plugin.<name>]` cap wins over the host-wide one, as in `SandboxPolicy`.
fn capped(
    patterns: impl IntoIterator<Item = impl std::fmt::Display>,
    own_cap: Option<&Vec<String>>,
    host_cap: &Option<Vec<String>>,
    key: &str,
) -> String {
    let mut line = quoted(patterns);
    if let Some(allow) = own_cap.or(host_cap.as_ref()) {
        let _ = write!(line, " (capped by {key} = {})", quoted(allow));
    }
    line
}

fn plugin_grants(out: &mut String, policy: &SandboxPolicy, name: &str, manifest: &Manifest) {
    let _ = writeln!(out, "# [{name}]");
    let rules = policy.rules.get(name);
    let publish = policy
        .resolve(name, &manifest.limits, &manifest.publish)
        .grants;
    let publish = capped(
        publish.patterns(),
        rules.and_then(|r| r.publish_allow.as_ref()),
        &policy.publish_allow,
        "publish_allow",
    );
    let _ = writeln!(out, "#   publish = {publish}");
    let request = match policy.request_grants_of(name, &manifest.request) {
        Some(grants) => capped(
            grants.patterns(),
            rules.and_then(|r| r.request_allow.as_ref()),
            &policy.request_allow,
            "request_allow",
        ),
        None => "[]".into(),
    };
    let _ = writeln!(out, "#   request = {request}");
    let state = match (manifest.state, policy.state_bucket_of(name)) {
        (false, _) => "not asked".to_string(),
        (true, Some(bucket)) => format!("granted (bucket \"{bucket}\", key space \"{name}\")"),
        (true, None) => "asked, but refused: state_bucket is off".to_string(),
    };
    let _ = writeln!(out, "#   state = {state}");
    let http = match policy.http_policy_of(name, &manifest.http) {
        None => "[]".to_string(),
        Some(http) => {
            let effective = http.grants.effective();
            let mut line = quoted(&effective);
            if effective.is_empty() {
                let _ = write!(
                    line,
                    " (the manifest asks for {}, none of it allowed by http_allow)",
                    quoted(&manifest.http)
                );
            }
            line.push_str(if http.allow_private {
                "; private and loopback addresses allowed (http_allow_private)"
            } else {
                "; public addresses only"
            });
            line
        }
    };
    let _ = writeln!(out, "#   http = {http}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginRules;

    #[test]
    fn grants_are_the_manifests_capped_by_the_operator() {
        let manifest = Manifest::parse(
            "subjects = [\"a\"]\npublish = [\"out.>\"]\nrequest = [\"svc.>\"]\nstate = true\nhttp = [\"https://*.example.com\", \"http://127.0.0.1:*\"]",
        )
        .unwrap();
        let mut policy = SandboxPolicy {
            http_allow: Some(vec!["https://api.example.com".into()]),
            state_bucket: Some("sluice-state".into()),
            ..SandboxPolicy::default()
        };
        policy.rules.insert(
            "pay".into(),
            PluginRules {
                publish_allow: Some(vec!["out.ok".into()]),
                ..PluginRules::default()
            },
        );
        let mut out = String::new();
        plugin_grants(&mut out, &policy, "pay", &manifest);
        assert!(out.contains("# [pay]"), "{out}");
        assert!(
            out.contains("publish = [\"out.>\"] (capped by publish_allow = [\"out.ok\"])"),
            "{out}"
        );
        assert!(out.contains("request = [\"svc.>\"]\n"), "{out}");
        assert!(
            out.contains("state = granted (bucket \"sluice-state\""),
            "{out}"
        );
        assert!(
            out.contains("http = [\"https://api.example.com\"]; public addresses only"),
            "{out}"
        );
    }
}
