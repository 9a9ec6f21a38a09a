//! The `envrig` binary: everything is in the library; this is the process edge.

fn main() -> std::process::ExitCode {
    envrig::cli::main()
}
