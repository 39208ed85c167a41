package pgfanout.testkit;

import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.TrustManagerFactory;
import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.common.unit.TimeValue;
import org.opensearch.env.Environment;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.plugins.SecureHttpTransportSettingsProvider;
import org.opensearch.plugins.SecureSettingsFactory;
import org.opensearch.plugins.SecureTransportSettingsProvider;
import org.opensearch.plugins.TransportExceptionHandler;
import org.opensearch.transport.Netty4Plugin;

/**
 * A single OpenSearch node with the modules the tests need (netty4 HTTP and
 * transport, analysis-common, painless) loaded from the classpath, HTTP and
 * transport on 127.0.0.1, no security plugin. Prints {@code READY} once the
 * node has started; closes the node on SIGTERM.
 * Usage: {@code OpenSearchMain <home dir> <http port> <transport port> [key=value ...]}.
 *
 * <p>HTTPS: with {@code -Dpgfanout.tls.keystore=<server.p12>} (password
 * {@code changeit}) the HTTP layer is OpenSearch's own
 * {@code SecureNetty4HttpServerTransport} ({@code http.type: netty4-secure}),
 * fed an SSL engine by {@link TestTls}, the hook the security plugin uses;
 * with {@code -Dpgfanout.tls.client_ca=<ca.pem>} too, it requires a client
 * certificate signed by that CA.
 */
public final class OpenSearchMain {
    private OpenSearchMain() {}

    /** Node's constructor that takes classpath plugins is protected. */
    private static final class PluginNode extends Node {
        PluginNode(Environment env, Collection<Class<? extends Plugin>> plugins) {
            super(env, plugins, true);
        }
    }

    /**
     * The HTTP layer's TLS from the test kit's certificate (what the
     * security plugin's {@code SecureSettingsFactory} provides): a server
     * engine per connection; no TLS on the transport layer.
     */
    public static final class TestTls extends Plugin {
        private final SSLContext context;
        private final boolean clientAuth;

        public TestTls() throws Exception {
            char[] password = "changeit".toCharArray();
            KeyStore keys = KeyStore.getInstance("PKCS12");
            try (InputStream in = Files.newInputStream(Path.of(System.getProperty("pgfanout.tls.keystore")))) {
                keys.load(in, password);
            }
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(keys, password);
            String clientCa = System.getProperty("pgfanout.tls.client_ca", "");
            clientAuth = !clientCa.isEmpty();
            TrustManagerFactory tmf = null;
            if (clientAuth) {
                KeyStore trust = KeyStore.getInstance("PKCS12");
                trust.load(null, null);
                try (InputStream in = Files.newInputStream(Path.of(clientCa))) {
                    trust.setCertificateEntry("ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
                }
                tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
                tmf.init(trust);
            }
            context = SSLContext.getInstance("TLS");
            context.init(kmf.getKeyManagers(), tmf == null ? null : tmf.getTrustManagers(), null);
        }

        @Override
        public Optional<SecureSettingsFactory> getSecureSettingFactory(Settings settings) {
            SecureHttpTransportSettingsProvider http = new SecureHttpTransportSettingsProvider() {
                @Override
                public Optional<TransportExceptionHandler> buildHttpServerExceptionHandler(Settings s, HttpServerTransport t) {
                    return Optional.empty();
                }

                @Override
                public Optional<SSLEngine> buildSecureHttpServerEngine(Settings s, HttpServerTransport t) {
                    SSLEngine engine = context.createSSLEngine();
                    engine.setUseClientMode(false);
                    engine.setNeedClientAuth(clientAuth);
                    return Optional.of(engine);
                }
            };
            return Optional.of(new SecureSettingsFactory() {
                @Override
                public Optional<SecureTransportSettingsProvider> getSecureTransportSettingsProvider(Settings s) {
                    return Optional.empty();
                }

                @Override
                public Optional<SecureHttpTransportSettingsProvider> getSecureHttpTransportSettingsProvider(Settings s) {
                    return Optional.of(http);
                }
            });
        }
    }

    public static void main(String[] args) throws Exception {
        Path home = Path.of(args[0]).toAbsolutePath();
        int http = Integer.parseInt(args[1]);
        int transport = Integer.parseInt(args[2]);
        // extra node settings from the command line: key=value after the ports
        Settings.Builder builder = Settings.builder();
        // put one by one: loadFromMap parses through XContent, which needs logging set up first
        boolean tls = System.getProperty("pgfanout.tls.keystore") != null;
        if (tls) builder.put("http.type", Netty4Plugin.NETTY_SECURE_HTTP_TRANSPORT_NAME);
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
        List<Class<? extends Plugin>> plugins = new ArrayList<>(List.of(Netty4Plugin.class, CommonAnalysisPlugin.class, PainlessPlugin.class));
        if (tls) plugins.add(TestTls.class);
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
        System.out.println("READY " + (tls ? "https" : "http") + "=127.0.0.1:" + http);
        System.out.flush();
    }
}
