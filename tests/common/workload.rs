//! Random workloads, written once: a deterministic generator, and the
//! bookkeeping every keyed workload needs (which ids exist, fresh ids for
//! inserts and key changes, values big enough to be TOASTed) around a
//! test's own mix of statements. The truth stays PostgreSQL: tests compare
//! stores with the final tables, so a workload only has to be varied and
//! replayable from its seed.

/// A small deterministic generator (xorshift), so a failing workload replays.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A test's mix of statements on one keyed table: `statement` writes one
/// SQL statement (it may keep [`Workload`]'s ids up to date with
/// [`Workload::insert`], [`Workload::rekey`] and [`Workload::delete`]); a
/// transaction holds one to `max_statements` of them.
#[derive(Clone, Copy)]
pub struct Mix {
    pub statement: fn(&mut Workload) -> String,
    pub max_statements: u64,
}

/// A random workload: a [`Mix`] and the ids of the rows it made.
pub struct Workload {
    pub rng: Rng,
    mix: Mix,
    live: Vec<i32>,
    next_id: i32,
    seq: u64,
}

impl Workload {
    /// An empty table's workload; the same `seed` gives the same statements.
    pub fn new(mix: Mix, seed: u64) -> Workload {
        Workload { rng: Rng(seed | 1), mix, live: Vec::new(), next_id: 1, seq: 0 }
    }

    /// How many rows exist.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// An existing row's id, or `None` when there is none.
    pub fn pick(&mut self) -> Option<i32> {
        (!self.live.is_empty()).then(|| self.live[self.rng.below(self.live.len() as u64) as usize])
    }

    /// A fresh id for an insert; the row exists from now on.
    pub fn insert(&mut self) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        self.live.push(id);
        id
    }

    /// Row `id` takes a fresh id (a primary-key change), which is returned.
    pub fn rekey(&mut self, id: i32) -> i32 {
        self.delete(id);
        self.insert()
    }

    /// Row `id` no longer exists.
    pub fn delete(&mut self, id: i32) {
        self.live.retain(|&x| x != id);
    }

    /// A SQL string literal `'<label>-<n>-<filler × times>'`, different each
    /// time; sized by the caller to be stored out of line (over 2 kB under
    /// STORAGE EXTERNAL).
    pub fn big(&mut self, label: &str, filler: &str, times: usize) -> String {
        self.seq += 1;
        format!("'{label}-{}-{}'", self.seq, filler.repeat(times))
    }

    /// One transaction of one to `max_statements` statements.
    pub fn transaction(&mut self) -> String {
        let n = 1 + self.rng.below(self.mix.max_statements);
        let statement = self.mix.statement;
        let body: Vec<String> = (0..n).map(|_| statement(self)).collect();
        format!("BEGIN; {}; COMMIT;", body.join("; "))
    }

    /// Runs `txns` transactions on `c`, one at a time.
    pub async fn run(&mut self, c: &tokio_postgres::Client, txns: usize) {
        for _ in 0..txns {
            let sql = self.transaction();
            c.batch_execute(&sql).await.unwrap_or_else(|e| panic!("workload: {e}\n{sql}"));
        }
    }
}
