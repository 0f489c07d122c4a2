//! The `strata` command: parses arguments and hands them to the library; see `cli/`.

mod cli;

fn main() {
    let code = match cli::run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
