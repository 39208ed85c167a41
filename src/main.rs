// jemalloc instead of glibc malloc. Records are allocated by the reader
// threads and freed by the sink workers; glibc then takes the allocating
// thread's arena lock on nearly every free (a third of a snapshot profile was
// malloc, free and the futex waits on those locks). jemalloc frees into the
// freeing thread's cache and returns memory in batches. It is built
// unprefixed (`malloc`, `free`, ... are jemalloc's), so the C code linked in
// (librdkafka and its queues) allocates from it too instead of from glibc's
// per-thread arenas (Kafka peak RSS 46.5 -> 41.6 MB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's compile-time options, read before `main`. One arena: a
/// sidecar has a handful of threads, and per-CPU arenas each kept their own
/// dirty pages (peak RSS +10 MB in the benchmark); the thread caches keep the
/// one arena's lock cold. Freed pages go back to the kernel after 1 s instead
/// of 10 s (peak RSS -1 MB, no CPU cost measured). `MALLOC_CONF` in the
/// environment still overrides these.
// SAFETY: jemalloc declares `malloc_conf` as a weak `const char *`; this
// strong definition replaces it with a pointer to a NUL-terminated static
// string (`Option<&u8>` has the layout of a nullable pointer).
#[allow(unsafe_code, non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: Option<&'static u8> = Some(&b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);

fn main() {
    std::process::exit(pgfanout::cli::main());
}
