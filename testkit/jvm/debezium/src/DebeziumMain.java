package pgfanout.testkit;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;
import java.io.BufferedWriter;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
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
 *
 * <p>For the benchmark: with {@code sink.file} each event's value (the
 * JsonConverter's text) is written as a line to that file instead of Kafka
 * (flushed per batch, as pgfanout's file sink does), and with
 * {@code count.file} the number of events handed over so far is written to
 * that file (replaced atomically) after each batch.
 */
public final class DebeziumMain {
    private DebeziumMain() {}

    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (InputStream in = new FileInputStream(args[0])) {
            p.load(in);
        }
        String sinkFile = p.getProperty("sink.file");
        String countFile = p.getProperty("count.file");
        KafkaProducer<String, String> producer = null;
        Writer file = null;
        if (sinkFile != null) {
            file = new BufferedWriter(new OutputStreamWriter(new FileOutputStream(sinkFile, true), StandardCharsets.UTF_8), 1 << 20);
        } else {
            Properties kp = new Properties();
            kp.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, p.getProperty("kafka.bootstrap.servers"));
            kp.setProperty(ProducerConfig.ACKS_CONFIG, "all");
            kp.setProperty(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
            kp.setProperty(ProducerConfig.LINGER_MS_CONFIG, "5");
            producer = new KafkaProducer<>(kp, new StringSerializer(), new StringSerializer());
        }
        final KafkaProducer<String, String> kafka = producer;
        final Writer lines = file;
        final long[] handed = {0};

        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class, Json.class, Json.class)
                .using(p)
                .notifying((List<ChangeEvent<String, String>> records, DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer) -> {
                    try {
                        for (ChangeEvent<String, String> r : records) {
                            if (lines != null) {
                                if (r.value() != null) {
                                    lines.write(r.value());
                                    lines.write('\n');
                                }
                                continue;
                            }
                            ProducerRecord<String, String> out = new ProducerRecord<>(r.destination(), r.key(), r.value());
                            for (io.debezium.engine.Header<?> h : r.headers()) {
                                Object v = h.getValue();
                                out.headers().add(h.getKey(), v == null ? null : v.toString().getBytes(StandardCharsets.UTF_8));
                            }
                            kafka.send(out);
                        }
                        if (lines != null) {
                            lines.flush();
                        } else {
                            kafka.flush();
                        }
                        if (countFile != null) {
                            for (ChangeEvent<String, String> r : records) {
                                if (r.value() != null) {
                                    handed[0]++;
                                }
                            }
                            Path tmp = Paths.get(countFile + ".tmp");
                            Files.write(tmp, Long.toString(handed[0]).getBytes(StandardCharsets.UTF_8));
                            Files.move(tmp, Paths.get(countFile), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
                        }
                    } catch (java.io.IOException e) {
                        throw new java.io.UncheckedIOException(e);
                    }
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
            try {
                if (kafka != null) {
                    kafka.close();
                }
                if (lines != null) {
                    lines.close();
                }
            } catch (Exception e) {
                e.printStackTrace();
            }
        }));
        executor.execute(engine);
    }
}
