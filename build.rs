//! Link options for the `pgfanout` binary.
//!
//! Packed relative relocations (`DT_RELR`, glibc 2.36+, GNU ld 2.38+): the
//! position-independent binary's ~90,000 relative relocations take a few
//! kilobytes instead of a 2 MB `.rela.dyn` table that the dynamic loader
//! reads in full at every start, so 2 MB less resident memory for the whole
//! life of the process (the table's pages stay mapped). The binary then
//! needs glibc 2.36 or later (Debian 12, as here and in `docker/`); the
//! linker records that as a symbol version (`GLIBC_ABI_DT_RELR`), so an
//! older system refuses to start it with a clear loader error instead of
//! misbehaving.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
