//! The `sluice` command: parse the command line, run it, map errors to an exit code.

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
