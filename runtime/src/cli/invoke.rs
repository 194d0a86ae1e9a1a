//! `sluice invoke FILE.wasm --subject S --data TEXT|@file [--header k=v]...`:
//! run a plugin on one event without NATS, the plugin author's inner loop.
//! Publish grants come from the manifest beside the file (or `--manifest`);
//! without one, every non-reserved subject is granted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::contract;
use crate::delivery::key::{KeyInput, derive_key_for};
use crate::engine::invoke::{InvocationRequest, InvokeLimits};
use crate::engine::{EngineSettings, WasmEngine, component, invoke as engine_invoke};
use crate::host;
use crate::manifest::Manifest;
use crate::nats::convert::outgoing_headers;
use crate::subject::{self, PublishGrants};

/// Arguments of `sluice invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The plugin component.
    file: PathBuf,
    /// Subject of the event.
    #[arg(long)]
    subject: String,
    /// Payload: literal text, or @path to read a file [default: empty].
    #[arg(long, default_value = "")]
    data: String,
    /// A header `name=value`; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Attempt number the plugin sees.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// Manifest for publish grants [default: FILE with .toml, if present].
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Time limit, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    timeout: Duration,
}

pub async fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    subject::validate_publish_subject(&args.subject).context("--subject")?;
    let payload = match args.data.strip_prefix('@') {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("--data: cannot read file {path}"))?
        }
        None => args.data.clone().into_bytes(),
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once('=') else {
            bail!("--header `{h}`: expected NAME=VALUE");
        };
        headers.push(contract::Header {
            name: name.to_string(),
            value: value.to_string(),
        });
    }
    let manifest = match args.manifest.clone().or_else(|| {
        let beside = args.file.with_extension("toml");
        beside.exists().then_some(beside)
    }) {
        Some(path) => Some(Manifest::load(&path)?),
        None => {
            eprintln!("note: no manifest found; granting publish to every non-reserved subject");
            None
        }
    };
    let grants = manifest
        .as_ref()
        .map(|m| m.publish.clone())
        .unwrap_or_else(|| PublishGrants::new(vec![">".into()]));

    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let engine = WasmEngine::new(EngineSettings {
        max_instances: 4,
        ..EngineSettings::default()
    })?;
    let linker = host::linker(engine.engine()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let compiled = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || component::compile(&engine, &linker, &bytes)).await?
    }
    .with_context(|| format!("{} is not a usable sluice plugin", args.file.display()))?;

    // The same derivation as the host's core mode (no stream sequence here).
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.clone())
    };
    let plugin = args
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let key = derive_key_for(
        plugin,
        &KeyInput {
            subject: &args.subject,
            reply: None,
            payload: &payload,
            header: &lookup,
            position: None,
            source: manifest.as_ref().and_then(|m| m.idempotency.key.as_ref()),
            hash_headers: manifest
                .as_ref()
                .map(|m| m.idempotency.hash_headers.as_slice())
                .unwrap_or(&[]),
        },
    )
    .value;
    let event = contract::Event {
        subject: args.subject.clone(),
        payload,
        headers,
        idempotency_key: key.clone(),
        attempt: args.attempt,
        delivery: contract::Delivery {
            stream: None,
            sequence: None,
            published_at_ms: None,
            reply_to: None,
        },
    };
    let name = args
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let tag = host::PluginTag {
        name: name.as_str().into(),
        version: compiled.info.version.as_str().into(),
    };
    let grants = Arc::new(grants);
    let config = Arc::new(host::PluginConfig::of_manifest(
        manifest.as_ref().map(|m| &m.config),
    ));
    // HTTP goes to the manifest's origins (public addresses only).
    let http = manifest.as_ref().and_then(|m| {
        crate::limits::SandboxPolicy::default()
            .http_policy_of(&name, &m.http)
            .map(Arc::new)
    });
    let log_budget = Arc::new(host::LogBudget::unlimited());
    let report = engine_invoke::invoke(
        &engine,
        &compiled,
        InvocationRequest {
            event: &event,
            tag: &tag,
            cpu: None,
            started: None,
            grants: &grants,
            config: &config,
            // No NATS here: state calls and requests return `not-granted`.
            state: None,
            requester: None,
            http: http.as_ref(),
            limits: InvokeLimits {
                timeout: args.timeout,
                ..InvokeLimits::default()
            },
            log_budget: &log_budget,
            keep_logs: true,
        },
    )
    .await;

    match &report.outcome {
        Ok(()) => println!("outcome: ok"),
        Err(f) => println!("outcome: failed ({}): {}", f.class.as_str(), f.message),
    }
    if let Err(f) = &report.outcome
        && let Some(delay) = f.retry_after
    {
        println!("retry after: {delay:?}");
    }
    println!(
        "plugin: {name} version {} (contract {})",
        compiled.info.version, compiled.info.contract_version
    );
    println!("idempotency key: {key}");
    println!(
        "elapsed: {:?} (instantiate {:?})",
        report.elapsed, report.instantiate_time
    );
    println!("logs ({}):", report.logs.len());
    for record in &report.logs {
        let fields: String = record
            .fields
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect();
        println!("  [{}] {}{}", record.level, record.message, fields);
    }
    println!("output ({} lines):", report.output.len());
    for line in &report.output {
        println!("  {line}");
    }
    if report.refused_publishes > 0 {
        println!("refused publishes: {}", report.refused_publishes);
    }
    println!("published ({}):", report.published.len());
    for (index, message) in report.published.iter().enumerate() {
        let headers = outgoing_headers(message, &key, &tag, index);
        let rendered: Vec<String> = headers
            .iter()
            .flat_map(|(n, vs)| vs.iter().map(move |v| format!("{n}={}", v.as_str())))
            .collect();
        println!("  {} [{}]", message.subject, rendered.join(", "));
        println!("    {}", String::from_utf8_lossy(&message.payload));
    }
    Ok(if report.outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
