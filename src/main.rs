//! The `cordon` binary; all logic lives in the library.

fn main() -> std::process::ExitCode {
    cordon::cli::run()
}
