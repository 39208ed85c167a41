package pgfanout.testkit;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;

/**
 * What the search-node launchers (ElasticsearchMain, OpenSearchMain) do
 * alike around their node, with the JDK only (so it compiles beside every
 * server): put the logging config where the node looks for it, keep the JVM
 * alive while the node runs, and close the node on shutdown.
 */
public final class NodeLifetime {
    private NodeLifetime() {}

    /** Closes a node (and waits for it). */
    public interface Closer {
        void close() throws Exception;
    }

    /**
     * Copies the {@code log4j2.properties} named by {@code -Dpgfanout.log4j2}
     * to {@code <home>/config/} unless one is there, as the distribution lays
     * it out. Returns that path; it exists when the node has a logging config.
     */
    public static Path logConfig(Path home) throws IOException {
        String log4j2 = System.getProperty("pgfanout.log4j2", "");
        Path logConfig = home.resolve("config/log4j2.properties");
        if (!log4j2.isEmpty() && !Files.exists(logConfig)) {
            Files.copy(Path.of(log4j2), logConfig);
        }
        return logConfig;
    }

    /**
     * Keeps the JVM alive until it shuts down (the node's threads are
     * daemons; the distribution's bootstrap does the same), and closes the
     * node with {@code close} in a shutdown hook (SIGTERM, or the watchdog
     * of {@link Launch}). Threads are named {@code <name>-keepalive} and
     * {@code <name>-shutdown}.
     */
    public static void holdUntilShutdown(String name, Closer close) {
        CountDownLatch stopped = new CountDownLatch(1);
        Thread keepAlive = new Thread(() -> {
            try {
                stopped.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }, name + "-keepalive");
        keepAlive.setDaemon(false);
        keepAlive.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                close.close();
            } catch (Exception e) {
                e.printStackTrace();
            }
            stopped.countDown();
        }, name + "-shutdown"));
    }
}
