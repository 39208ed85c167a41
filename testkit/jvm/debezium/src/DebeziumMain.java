package pgfanout.testkit;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;
import java.io.FileInputStream;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Debezium's PostgreSQL connector in the embedded engine, producing every
 * change event to Kafka as Kafka Connect would: the topic is the event's
 * destination ({@code <topic.prefix>.<schema>.<table>}), key and value are
 * the JsonConverter's text ({@code converter.schemas.enable} chooses the
 * envelope with or without its schema), Debezium's headers are kept, and a
 * batch's offsets are committed once the producer has flushed it (so a
 * restart resends, never skips). Usage: {@code DebeziumMain <engine.properties>};
 * the properties are the engine's, plus {@code kafka.bootstrap.servers}.
 */
public final class DebeziumMain {
    private DebeziumMain() {}

    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (InputStream in = new FileInputStream(args[0])) {
            p.load(in);
        }
        Properties kp = new Properties();
        kp.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, p.getProperty("kafka.bootstrap.servers"));
        kp.setProperty(ProducerConfig.ACKS_CONFIG, "all");
        kp.setProperty(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        kp.setProperty(ProducerConfig.LINGER_MS_CONFIG, "5");
        KafkaProducer<String, String> producer = new KafkaProducer<>(kp, new StringSerializer(), new StringSerializer());

        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class, Json.class, Json.class)
                .using(p)
                .notifying((List<ChangeEvent<String, String>> records, DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer) -> {
                    for (ChangeEvent<String, String> r : records) {
                        ProducerRecord<String, String> out = new ProducerRecord<>(r.destination(), r.key(), r.value());
                        for (io.debezium.engine.Header<?> h : r.headers()) {
                            Object v = h.getValue();
                            out.headers().add(h.getKey(), v == null ? null : v.toString().getBytes(StandardCharsets.UTF_8));
                        }
                        producer.send(out);
                    }
                    producer.flush();
                    for (ChangeEvent<String, String> r : records) {
                        committer.markProcessed(r);
                    }
                    committer.markBatchFinished();
                })
                .using((success, message, error) -> {
                    System.out.println("debezium engine stopped: success=" + success + " " + message);
                    if (error != null) {
                        error.printStackTrace(System.out);
                    }
                    System.out.flush();
                    Runtime.getRuntime().halt(success ? 0 : 1);
                })
                .build();
        ExecutorService executor = Executors.newSingleThreadExecutor();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                engine.close();
                executor.shutdown();
                executor.awaitTermination(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            }
            producer.close();
        }));
        executor.execute(engine);
    }
}
