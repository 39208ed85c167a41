package pgfanout.testkit;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.common.unit.TimeValue;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * A single OpenSearch node with the modules the tests need (netty4 HTTP and
 * transport, analysis-common, painless) loaded from the classpath, HTTP and
 * transport on 127.0.0.1, no security. Prints {@code READY} once the node has
 * started; closes the node on SIGTERM.
 * Usage: {@code OpenSearchMain <home dir> <http port> <transport port> [key=value ...]}.
 */
public final class OpenSearchMain {
    private OpenSearchMain() {}

    /** Node's constructor that takes classpath plugins is protected. */
    private static final class PluginNode extends Node {
        PluginNode(Environment env, Collection<Class<? extends Plugin>> plugins) {
            super(env, plugins, true);
        }
    }

    public static void main(String[] args) throws Exception {
        Path home = Path.of(args[0]).toAbsolutePath();
        int http = Integer.parseInt(args[1]);
        int transport = Integer.parseInt(args[2]);
        // extra node settings from the command line: key=value after the ports
        Settings.Builder builder = Settings.builder();
        // put one by one: loadFromMap parses through XContent, which needs logging set up first
        NodeLifetime.nodeSettings(home, http, transport, args, 3).forEach(builder::put);
        Settings settings = builder.build();
        // logging: the log4j2.properties named by -Dpgfanout.log4j2 (console), as the distribution's bootstrap does
        Path logConfig = NodeLifetime.logConfig(home);
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), home.resolve("config"), () -> "node-1");
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("node-1");
        if (Files.exists(logConfig)) {
            LogConfigurator.configure(env);
        } else {
            LogConfigurator.configureWithoutConfig(settings);
        }
        List<Class<? extends Plugin>> plugins = List.of(Netty4Plugin.class, CommonAnalysisPlugin.class, PainlessPlugin.class);
        Node node = new PluginNode(env, plugins).start();
        // the node's threads are daemons: keep the JVM alive until shutdown, then close the node
        NodeLifetime.holdUntilShutdown("opensearch", () -> {
            node.close();
            node.awaitClose(10, TimeUnit.SECONDS);
        });
        // a single node: indexes without replicas, so they are green (persistent: a node setting is not used)
        node.client().admin().cluster().prepareHealth().setWaitForYellowStatus().setTimeout(TimeValue.timeValueSeconds(120)).get();
        node.client().admin().cluster().prepareUpdateSettings()
            .setPersistentSettings(Settings.builder().put("cluster.default_number_of_replicas", 0).build())
            .get();
        System.out.println("READY http=127.0.0.1:" + http);
        System.out.flush();
    }
}
