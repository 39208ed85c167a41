//! `dead_letter: { to: kafka, sink, topic }`: letters in a compacted topic
//! on the cluster of a Kafka sink of the config
//! ([`pgfanout_kafka::letters`]). The key is the letter's id, the value the
//! letter as a JSON line of the file destination; a delivered letter
//! gets a tombstone, a letter refused again a new value. Reading keeps the
//! latest value of each id.

use pgfanout_kafka::letters::LetterTopic;
use pgfanout_kafka::KafkaSinkConfig;

use crate::config::Config;

/// The topic `cfg.dead_letter` names, with its Kafka sink's settings.
pub fn topic(cfg: &Config) -> Result<LetterTopic, String> {
    let name = cfg.dead_letter.sink.as_deref().ok_or("dead_letter.sink: missing; name the Kafka sink whose cluster takes the letters")?;
    let sink = cfg.sinks.get(name).ok_or_else(|| format!("dead_letter.sink: no sink named {name:?}"))?;
    let settings: KafkaSinkConfig = serde_json::from_value(sink.settings.clone()).map_err(|e| format!("sinks.{name}: {e}"))?;
    LetterTopic::new(&settings, &cfg.dead_letter.kafka_topic(&cfg.source.postgres.slot))
}
