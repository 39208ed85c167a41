//! The `to_jsonb()` oracle: every column of every built-in type, captured
//! through pgoutput and decoded by us, must give the JSON PostgreSQL's own
//! `to_jsonb()` gives (compared as `jsonb::text`, which normalizes spacing
//! and key order but keeps numeric scale).

use bytes::Bytes;
use pgfanout_postgres::pgoutput::{self, LogicalMessage};
use pgfanout_sdk::{Lsn, Op};
use testkit::PgCluster;

#[path = "support/replay.rs"]
mod replay;

/// The settings the replication connection uses (pgoutput writes values
/// with the decoding session's settings).
const SESSION: &str = "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET IntervalStyle = postgres; \
    SET extra_float_digits = 3; SET bytea_output = hex; \
    SET synchronous_commit = on;"; // the test cluster runs with it off; decoding reads flushed WAL only

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN shorttext AS text;
CREATE DOMAIN money_num AS numeric(12, 3);
CREATE DOMAIN int_list AS int4[];
CREATE TYPE inner_t AS (n numeric, label text);
CREATE TYPE outer_t AS (id int, inner_v inner_t, tags text[], at timestamptz, ok bool, d date);
CREATE TABLE every_type (
    id int PRIMARY KEY,
    c_bool bool, c_bool_arr bool[],
    c_int2 int2, c_int4 int4, c_int8 int8, c_int2_arr int2[], c_int4_arr int4[], c_int8_arr int8[], c_int_2d int4[][],
    c_float4 real, c_float8 float8, c_float4_arr real[], c_float8_arr float8[],
    c_numeric numeric, c_numeric_scaled numeric(10, 4), c_numeric_arr numeric[],
    c_oid oid, c_xid xid, c_oid_arr oid[],
    c_text text, c_text_arr text[], c_text_2d text[][], c_varchar varchar(20), c_varchar_arr varchar[],
    c_char char(5), c_char_arr char(5)[], c_name name, c_qchar "char",
    c_bytea bytea, c_bytea_arr bytea[],
    c_json json, c_jsonb jsonb, c_json_arr json[], c_jsonb_arr jsonb[],
    c_date date, c_date_arr date[],
    c_ts timestamp, c_ts_arr timestamp[], c_ts3 timestamp(3),
    c_tstz timestamptz, c_tstz_arr timestamptz[],
    c_time time, c_time_arr time[], c_timetz timetz, c_timetz_arr timetz[],
    c_interval interval, c_interval_arr interval[],
    c_uuid uuid, c_uuid_arr uuid[],
    c_inet inet, c_cidr cidr, c_macaddr macaddr, c_macaddr8 macaddr8, c_inet_arr inet[],
    c_money money, c_money_arr money[],
    c_bit bit(4), c_varbit varbit, c_bit_arr varbit[],
    c_xml xml, c_tsvector tsvector, c_tsquery tsquery,
    c_point point, c_line line, c_lseg lseg, c_box box, c_path path, c_polygon polygon, c_circle circle,
    c_box_arr box[], c_point_arr point[],
    c_int4range int4range, c_int8range int8range, c_numrange numrange, c_tsrange tsrange, c_tstzrange tstzrange,
    c_daterange daterange, c_int4multirange int4multirange, c_range_arr int4range[],
    c_enum mood, c_enum_arr mood[],
    c_posint posint, c_shorttext shorttext, c_money_num money_num, c_posint_arr posint[], c_int_list int_list,
    c_inner inner_t, c_comp outer_t, c_comp_arr outer_t[],
    c_pg_lsn pg_lsn
);
"#;

const ROWS: &str = r#"
INSERT INTO every_type VALUES (
    1,
    true, '{t,f,NULL}',
    -32768, 2147483647, -9223372036854775808, '{1,-2}', '{1,NULL,-3}', '{9223372036854775807}', '{{1,2},{3,4}}',
    1.5, 0.1, '{3.4028235e+38,-1.17549435e-38}', '{1e300,-0.000001,NaN,Infinity,-Infinity,-0}',
    '12345678901234567890.12345678901234567890123', 1.5, '{1.50,NaN,-0.0001,100}',
    12345, '999', '{1,4294967295}',
    'plain', '{a,"b c","with \"quote\"",NULL,"NULL","",x\\y}', '{{a,b},{NULL,"d e"}}', 'vc', '{"x y",z}',
    'ab', '{ab,abcde,NULL}', 'nm', 'q',
    '\x00ff00', '{"\\x00","\\xdead",NULL}',
    '{"b": [1, 2.50, "x"], "a": null}', '{"z": 1.50, "a": [true, {"k": "v"}], "n": 1e3}',
    ARRAY['{"a": 1}'::json, '[1, 2]', NULL], ARRAY['{"a": 1.0}'::jsonb, 'null', '"s"'],
    '2024-02-29', '{2024-01-01,infinity,-infinity,NULL}',
    '2024-02-29 13:14:15.123456', '{"2024-01-01 00:00:00","2024-01-01 00:00:00.5"}', '2024-02-29 13:14:15.12345',
    '2024-02-29 13:14:15.5+05:30', '{"2024-01-01 00:00:00+00",infinity}',
    '13:14:15.5', '{00:00:00,23:59:59.999999}', '13:14:15+05:30', '{"01:02:03-08"}',
    '1 year 2 mons 3 days 04:05:06.789', '{"1 day","-00:00:01"}',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}',
    '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '{::1,10.0.0.1}',
    '1234.56', '{-1.5,0}',
    B'1010', B'101', '{1,0101}',
    '<a x="1">t &amp; u</a>', 'a fat cat sat', 'fat & (cat | dog)',
    '(1,2)', '{1,-1,0}', '[(0,0),(1,1)]', '((1,1),(0,0))', '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(1,0))', '<(0,0),1.5>',
    '{(1,1),(0,0);(3,3),(2,2)}', '{"(1,2)","(3.5,-4)"}',
    '[1,10)', '[1,9223372036854775807)', '(1.5,2.50]', '["2024-01-01 00:00:00","2024-01-02 00:00:00")',
    '[2024-01-01 00:00:00+00,2024-02-01 00:00:00+00)', '[2024-01-01,2024-02-01)', '{[1,3),[5,7)}', '{"[1,2)",empty}',
    'happy', '{sad,happy,NULL}',
    42, 'dom text', 12.5, '{1,2}', '{{5,6},{7,NULL}}',
    ROW(1.50, 'in ner'),
    ROW(1, ROW(2.0, 'x,y'), '{a,"b c"}', '2024-01-01 00:00:00+00', true, '2020-02-02'),
    ARRAY[ROW(1, ROW(NULL, 'q"t\'), '{}', NULL, false, '0001-01-01 BC')::outer_t, NULL],
    '0/16B3748'
);
INSERT INTO every_type (id, c_float4, c_float8, c_numeric, c_numeric_arr, c_text, c_char, c_bytea, c_date, c_ts, c_tstz,
    c_ts_arr, c_int_2d, c_int4_arr, c_text_arr, c_jsonb, c_json, c_float8_arr, c_interval, c_timetz, c_tstzrange, c_int4range,
    c_comp, c_inner, c_comp_arr, c_text_2d, c_char_arr, c_xml, c_money, c_box_arr, c_numeric_scaled, c_int8range)
VALUES (2, 'NaN', '-Infinity', 'NaN', '{Infinity,-Infinity,0.000}',
    E'quote " backslash \\ newline \n tab \t cr \r unicode é ✓ 🎉 nul-ish \x01 {a,b} (c)', 'a', '\x', '0044-03-15 BC',
    '0001-01-01 00:00:00 BC', 'infinity',
    '{-infinity,"2000-01-01 00:00:00","0010-01-01 12:00:00 BC"}', '[0:1][1:2]={{1,NULL},{3,4}}', '[0:1]={1,2}', '{}',
    '[]', '  {"a":1,  "a":2, "b": "\u00e9"} ', '{1e-7,1e20,1.0000000000000002,5e-324}', '-1 days +02:03:00',
    '00:00:00+00', '(,)', 'empty',
    ROW(NULL, NULL, NULL, NULL, NULL, NULL), ROW(NULL, ''), '{}', '{{"a,b","{x}"},{"  spaced  ","back\\slash"}}',
    '{"a    ",""}', '<?xml version="1.0"?><r/>', '-0.01', '{}', -0.00005, '(,)');
INSERT INTO every_type (id) VALUES (3);
INSERT INTO every_type (id, c_float4, c_float8, c_numeric, c_date, c_ts, c_tstz, c_ts_arr, c_tstz_arr, c_text_arr, c_comp,
    c_timetz, c_interval, c_numeric_arr, c_jsonb, c_int_2d)
VALUES (4, 'Infinity', 'NaN', '-Infinity', '-infinity', 'infinity', '0010-05-06 07:08:09.000001+00 BC',
    '{"12345-06-07 00:00:00"}', '{"-infinity","1999-12-31 23:59:59.999999+00"}', '{"",NULL,"\"\"",",","}"}',
    ROW(-7, ROW('-0.0e0', E'multi\nline "quoted" \\'), '{"{}","(x)",NULL}', 'infinity', NULL, 'infinity'),
    '23:59:59.999999-12:34', '-178000000 years', '{0,-0.0,1e-20}', '{"big": 123456789012345678901234567890.000}',
    '{{{1},{2}},{{3},{4}}}');
"#;

/// Peeks every pgoutput message of `slot` and decodes them.
async fn peek(client: &tokio_postgres::Client, slot: &str, publication: &str) -> Vec<(Lsn, LogicalMessage)> {
    let rows = client
        .query(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
            &[&slot, &publication],
        )
        .await
        .expect("peek changes");
    rows.iter()
        .map(|r| {
            let lsn: Lsn = r.get::<_, String>(0).parse().expect("lsn");
            let data: Vec<u8> = r.get(1);
            (lsn, pgoutput::decode(Bytes::from(data)).unwrap_or_else(|e| panic!("decode at {lsn}: {e}")))
        })
        .collect()
}

#[tokio::test]
async fn every_type_matches_to_jsonb() {
    let pg = PgCluster::start();
    let db = pg.create_database("values_oracle").await;
    let client = pg.client(&db).await;
    client.batch_execute(SESSION).await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute("CREATE PUBLICATION values_pub FOR TABLE every_type").await.unwrap();
    client.batch_execute("SELECT pg_create_logical_replication_slot('values_slot', 'pgoutput')").await.unwrap();
    client.batch_execute(ROWS).await.unwrap();

    let messages = peek(&client, "values_slot", "values_pub").await;
    let changes = replay::build_all(&client, messages).await;
    assert_eq!(changes.len(), 4, "one insert per row");

    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'every_type'::regclass AND attnum > 0 \
             AND NOT attisdropped ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let mut failures = Vec::new();
    let mut non_null = std::collections::HashSet::new();
    for change in &changes {
        assert_eq!(change.op, Op::Insert);
        let after = change.after.as_ref().expect("after");
        let id: i32 = after.get("id").expect("id").to_template_text().parse().expect("id number");
        assert_eq!(after.len(), columns.len(), "row {id}: every column present");
        for col in &columns {
            let ours = after.get(col).unwrap_or_else(|| panic!("row {id}: column {col} missing")).to_json_string();
            if ours != "null" {
                non_null.insert(col.clone());
            }
            let sql = format!(
                "SELECT $1::text::jsonb::text = coalesce(to_jsonb({col})::text, 'null'), \
                 coalesce(to_jsonb({col})::text, 'null'), $1::text::jsonb::text FROM every_type WHERE id = $2"
            );
            let row = client.query_one(&sql, &[&ours, &id]).await.unwrap_or_else(|e| panic!("row {id} {col}: {ours}: {e}"));
            let mut equal: bool = row.get(0);
            // Digit for digit too: jsonb equality forgives `1e+20` for
            // `100000000000000000000` (same numeric); a store keeping text
            // would not. serde_json with arbitrary_precision compares
            // numbers by their text.
            let theirs: serde_json::Value = serde_json::from_str(&row.get::<_, String>(1)).expect("to_jsonb JSON");
            equal &= serde_json::from_str::<serde_json::Value>(&ours).ok() == Some(theirs);
            // json and jsonb byte for byte: the comparison through jsonb
            // above would forgive a duplicate key (jsonb keeps the last),
            // which a store would see (and OpenSearch refuses).
            if col == "c_json" || col == "c_jsonb" {
                equal &= ours == row.get::<_, String>(1);
            }
            if !equal {
                let theirs: String = row.get(1);
                failures.push(format!("row {id} column {col}:\n  ours:   {ours}\n  theirs: {theirs}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    let never: Vec<_> = columns.iter().filter(|c| !non_null.contains(*c)).collect();
    assert!(never.is_empty(), "columns never tested with a value: {never:?}");
}
