package pgfanout.testkit;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

/**
 * What the search-node launchers (ElasticsearchMain, OpenSearchMain) do
 * alike around their node, with the JDK only (so it compiles beside every
 * server): the node's settings, the logging config where the node looks for
 * it, keeping the JVM alive while the node runs, and closing the node on
 * shutdown.
 */
public final class NodeLifetime {
    private NodeLifetime() {}

    /** Closes a node (and waits for it). */
    public interface Closer {
        void close() throws Exception;
    }

    /**
     * The settings of a single test node (for {@code Settings.Builder.put}):
     * home, data and logs under {@code home}, HTTP and transport on 127.0.0.1,
     * single-node discovery, no disk watermarks, at most two processors; then
     * {@code key=value} arguments from {@code args[from]} on, which win.
     * Creates the home's config, data and logs directories.
     */
    public static Map<String, String> nodeSettings(Path home, int http, int transport, String[] args, int from) throws IOException {
        for (String dir : new String[] {"config", "data", "logs"}) {
            Files.createDirectories(home.resolve(dir));
        }
        Map<String, String> settings = new LinkedHashMap<>();
        settings.put("path.home", home.toString());
        settings.put("path.data", home.resolve("data").toString());
        settings.put("path.logs", home.resolve("logs").toString());
        settings.put("cluster.name", "pgfanout-test");
        settings.put("node.name", "node-1");
        settings.put("network.host", "127.0.0.1");
        settings.put("http.port", Integer.toString(http));
        settings.put("transport.port", Integer.toString(transport));
        settings.put("discovery.type", "single-node");
        settings.put("cluster.routing.allocation.disk.threshold_enabled", "false");
        settings.put("action.auto_create_index", "true");
        settings.put("node.processors", Integer.toString(Math.min(2, Runtime.getRuntime().availableProcessors())));
        for (int i = from; i < args.length; i++) {
            int eq = args[i].indexOf('=');
            if (eq > 0) settings.put(args[i].substring(0, eq), args[i].substring(eq + 1));
        }
        return settings;
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
