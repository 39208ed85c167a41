package pgfanout.testkit;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.core.TimeValue;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.PluginsLoader;

/**
 * A single Elasticsearch 8 node (no X-Pack: no security, plain HTTP) with the
 * modules under {@code <install>/modules} (transport-netty4), HTTP and
 * transport on 127.0.0.1. New indexes get no replicas (a catch-all index
 * template), so they are green. Prints {@code READY}; closes on SIGTERM.
 * Must run with the server on the module path
 * ({@code --module-path lib --add-modules=ALL-MODULE-PATH}).
 * Usage: {@code ElasticsearchMain <home dir> <http port> <transport port> <modules dir> [key=value ...]}.
 */
public final class ElasticsearchMain {
    private ElasticsearchMain() {}

    public static void main(String[] args) throws Exception {
        Path home = Path.of(args[0]).toAbsolutePath();
        int http = Integer.parseInt(args[1]);
        int transport = Integer.parseInt(args[2]);
        Path modules = Path.of(args[3]).toAbsolutePath();
        Settings.Builder builder = Settings.builder();
        // put one by one: loadFromMap parses through XContent, which needs logging set up first
        NodeLifetime.nodeSettings(home, http, transport, args, 4).forEach(builder::put);
        Settings settings = builder.build();
        if (!Files.exists(home.resolve("modules"))) {
            Files.createSymbolicLink(home.resolve("modules"), modules);
        }
        Path logConfig = NodeLifetime.logConfig(home);
        LogConfigurator.configureESLogging();
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("node-1");
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), home.resolve("config"), () -> "node-1");
        if (Files.exists(logConfig)) {
            LogConfigurator.configure(env, true);
        } else {
            LogConfigurator.configureWithoutConfig(settings);
        }
        PluginsLoader plugins = PluginsLoader.createPluginsLoader(PluginsLoader.loadModulesBundles(env.modulesDir()), Set.of(), Map.of());
        Node node = new Node(env, plugins).start();
        // the node's threads are daemons: keep the JVM alive until shutdown, then close the node
        NodeLifetime.holdUntilShutdown("elasticsearch", () -> {
            node.close();
            node.awaitClose(10, TimeUnit.SECONDS);
        });
        node.client().admin().cluster().prepareHealth(TimeValue.timeValueSeconds(120)).setWaitForYellowStatus().get();
        // a single node: no replicas, so new indexes are green
        node.client().admin().indices().preparePutTemplate("pgfanout-no-replicas")
            .setPatterns(java.util.List.of("*"))
            .setOrder(-1000)
            .setSettings(Settings.builder().put("index.number_of_replicas", 0).build())
            .get();
        System.out.println("READY http=127.0.0.1:" + http);
        System.out.flush();
    }
}
