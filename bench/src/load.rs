//! The data each throughput workload writes: its table and the SQL that
//! produces its changes. Loads run server-side (one statement, or a `DO`
//! block that commits in a loop) so the client does not limit the rate and
//! the WAL is the same whichever tool reads it.

/// The shape of a throughput workload's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `rows` inserts in one transaction.
    Big,
    /// `rows / 100` transactions of 100 inserts.
    Small,
    /// `rows / 100` transactions of 40 inserts, 40 updates leaving a
    /// TOASTed column unchanged, and 20 deletes, on a 10-column table.
    Mixed,
}

impl Shape {
    /// The table the shape writes to.
    pub fn table(self) -> &'static str {
        match self {
            Shape::Big | Shape::Small => "bench_rows",
            Shape::Mixed => "bench_mixed",
        }
    }

    /// `CREATE TABLE` for the shape's table (run once per cluster).
    pub fn ddl(self) -> String {
        match self {
            Shape::Big | Shape::Small => "CREATE TABLE bench_rows (id bigint PRIMARY KEY, account int NOT NULL, name text NOT NULL, \
                 amount numeric(12,2) NOT NULL, created_at timestamptz NOT NULL, note text NOT NULL)"
                .into(),
            Shape::Mixed => "CREATE TABLE bench_mixed (id bigint PRIMARY KEY, qty int NOT NULL, active bool NOT NULL, \
                 price numeric(12,2) NOT NULL, score float8, name text NOT NULL, updated_at timestamptz NOT NULL, \
                 ref uuid NOT NULL, attrs jsonb, body text);
                 ALTER TABLE bench_mixed ALTER COLUMN body SET STORAGE EXTERNAL"
                .into(),
        }
    }

    /// Rows the mixed workload creates before the slots exist (their TOASTed
    /// `body` is what updates leave unchanged): a tenth of the changes, a
    /// multiple of 40, at least 40.
    pub fn prepopulated(self, rows: u64) -> u64 {
        match self {
            Shape::Mixed => ((rows / 10) / 40).max(1) * 40,
            _ => 0,
        }
    }

    /// SQL run before each run's slots are created: empties the table and,
    /// for the mixed shape, inserts the rows that will be updated (each with
    /// a ~2.2 kB `body` stored out of line).
    pub fn reset_sql(self, rows: u64) -> String {
        let p = self.prepopulated(rows);
        match self {
            Shape::Big | Shape::Small => "TRUNCATE bench_rows".into(),
            Shape::Mixed => format!(
                "TRUNCATE bench_mixed;
                 INSERT INTO bench_mixed SELECT g, g % 50, g % 2 = 0, g / 100.0, g * 0.5, 'item-' || g, now(), gen_random_uuid(),
                   jsonb_build_object('color', 'c' || (g % 7), 'tags', jsonb_build_array(g % 3, g % 5)), repeat(md5(g::text), 70)
                 FROM generate_series(1, {p}) g"
            ),
        }
    }

    /// Number of row changes [`load_sql`](Self::load_sql) makes for `rows`.
    pub fn changes(self, rows: u64) -> u64 {
        match self {
            Shape::Big => rows,
            Shape::Small | Shape::Mixed => (rows / 100).max(1) * 100,
        }
    }

    /// The timed load (run after the slots are created).
    pub fn load_sql(self, rows: u64) -> String {
        let row_values = "g, g % 1000, 'customer-' || g, (g % 100000) / 100.0, \
                          timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', md5(g::text)";
        let txns = (rows / 100).max(1);
        match self {
            Shape::Big => format!("INSERT INTO bench_rows SELECT {row_values} FROM generate_series(1, {rows}) g"),
            Shape::Small => format!(
                "DO $$ BEGIN
                   FOR i IN 0..{last} LOOP
                     INSERT INTO bench_rows SELECT {row_values} FROM generate_series(i * 100 + 1, i * 100 + 100) g;
                     COMMIT;
                   END LOOP;
                 END $$",
                last = txns - 1
            ),
            Shape::Mixed => {
                let p = self.prepopulated(rows);
                format!(
                    "DO $$ BEGIN
                       FOR k IN 0..{last} LOOP
                         INSERT INTO bench_mixed SELECT g, g % 50, g % 2 = 0, g / 100.0, g * 0.5, 'item-' || g, now(),
                           gen_random_uuid(), jsonb_build_object('color', 'c' || (g % 7)), 'short ' || g
                         FROM generate_series({p} + 40 * k + 1, {p} + 40 * k + 40) g;
                         UPDATE bench_mixed SET qty = qty + 1, price = price + 1, updated_at = now(),
                           attrs = attrs || '{{\"seen\": true}}'
                         WHERE id BETWEEN (40 * k) % {p} + 1 AND (40 * k) % {p} + 40;
                         DELETE FROM bench_mixed WHERE id BETWEEN {p} + 20 * k + 1 AND {p} + 20 * k + 20;
                         COMMIT;
                       END LOOP;
                     END $$",
                    last = txns - 1
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(Shape::Big.changes(1_000_000), 1_000_000);
        assert_eq!(Shape::Small.changes(1_000_050), 1_000_000);
        assert_eq!(Shape::Mixed.prepopulated(1_000_000), 100_000);
        assert_eq!(Shape::Mixed.prepopulated(100), 40);
        assert!(Shape::Small.load_sql(1000).contains("0..9 LOOP"));
    }
}
