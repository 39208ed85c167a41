fn main() {
    std::process::exit(pgfanout::cli::main());
}
