//! `orders-demo`: drives the order saga for `make demo` (scripts/demo.sh
//! starts NATS, the host and the payment service, then runs this). See
//! docs/tutorial.md.

mod demo;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match demo::Args::parse().map(demo::run) {
        Ok(run) => match run.await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("orders-demo: FAILED: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("orders-demo: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
