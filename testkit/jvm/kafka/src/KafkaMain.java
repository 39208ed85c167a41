package pgfanout.testkit;

import java.io.FileInputStream;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Properties;
import org.apache.kafka.common.Uuid;
import org.apache.kafka.common.utils.internals.Exit;

/**
 * Formats the log directory when it is new ({@code kafka-storage format}
 * with a random cluster id, and the SCRAM users listed in the property
 * {@code pgfanout.testkit.add.scram}) and runs the broker, in one JVM (one
 * JVM start less). Usage: {@code KafkaMain <server.properties>}.
 */
public final class KafkaMain {
    private KafkaMain() {}

    private static final class Exited extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final int code;

        Exited(int code, String message) {
            super(message, null, false, false);
            this.code = code;
        }
    }

    public static void main(String[] args) throws Exception {
        String props = args[0];
        Properties p = new Properties();
        try (InputStream in = new FileInputStream(props)) {
            p.load(in);
        }
        Path logDir = Path.of(p.getProperty("log.dirs").split(",")[0].trim());
        if (!Files.exists(logDir.resolve("meta.properties"))) {
            Exit.setExitProcedure((code, message) -> {
                throw new Exited(code, message);
            });
            try {
                java.util.List<String> format = new java.util.ArrayList<>(java.util.List.of("format", "-t", Uuid.randomUuid().toString(), "-c", props));
                // SCRAM users of a secured test broker: "MECH=[name=..,password=..];..."
                String scram = p.getProperty("pgfanout.testkit.add.scram", "");
                for (String one : scram.split(";")) {
                    if (!one.isBlank()) {
                        format.add("--add-scram");
                        format.add(one.trim());
                    }
                }
                kafka.tools.StorageTool.main(format.toArray(new String[0]));
            } catch (Exited e) {
                if (e.code != 0) {
                    System.err.println("kafka-storage format failed (" + e.code + "): " + e.getMessage());
                    System.exit(1);
                }
            } finally {
                // back to the real exit (resetExitProcedure() installs a test guard that throws)
                Exit.setExitProcedure((code, message) -> Runtime.getRuntime().exit(code));
            }
        }
        kafka.Kafka.main(new String[] {props});
    }
}
