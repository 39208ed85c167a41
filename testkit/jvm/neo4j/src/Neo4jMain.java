package pgfanout.testkit;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.BoltConnectorInternalSettings;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.configuration.ssl.ClientAuth;
import org.neo4j.configuration.ssl.SslPolicyConfig;
import org.neo4j.configuration.ssl.SslPolicyScope;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.io.ByteUnit;

/**
 * Embedded Neo4j Community with Bolt on 127.0.0.1 (no HTTP), auth enabled:
 * the user {@code neo4j} gets the given password (no change required).
 * Prints {@code READY} once Bolt accepts logins; stops cleanly on SIGTERM.
 * Usage: {@code Neo4jMain <home dir> <bolt port> <password> [<tls dir>]}:
 * with a TLS directory (holding {@code server.key}, PKCS#8 PEM, and
 * {@code server.pem}), Bolt requires TLS with that certificate.
 */
public final class Neo4jMain {
    private Neo4jMain() {}

    public static void main(String[] args) {
        Path home = Path.of(args[0]);
        int port = Integer.parseInt(args[1]);
        String password = args[2];
        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home);
        if (args.length > 3) {
            Path tls = Path.of(args[3]);
            SslPolicyConfig bolt = SslPolicyConfig.forScope(SslPolicyScope.BOLT);
            builder.setConfig(bolt.enabled, true)
                .setConfig(bolt.base_directory, tls)
                .setConfig(bolt.private_key, tls.resolve("server.key"))
                .setConfig(bolt.public_certificate, tls.resolve("server.pem"))
                .setConfig(bolt.trusted_dir, tls.resolve("trusted"))
                .setConfig(bolt.revoked_dir, tls.resolve("revoked"))
                .setConfig(bolt.client_auth, ClientAuth.NONE);
        }
        DatabaseManagementService dbms = builder
            .setConfig(BoltConnector.enabled, true)
            .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
            .setConfig(BoltConnector.advertised_address, new SocketAddress("127.0.0.1", port))
            .setConfig(
                BoltConnector.encryption_level,
                args.length > 3 ? BoltConnector.EncryptionLevel.REQUIRED : BoltConnector.EncryptionLevel.DISABLED)
            .setConfig(HttpConnector.enabled, false)
            .setConfig(HttpsConnector.enabled, false)
            .setConfig(GraphDatabaseSettings.auth_enabled, true)
            .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(64))
            .setConfig(GraphDatabaseSettings.shutdown_transaction_end_timeout, Duration.ofSeconds(2))
            // Bolt's shutdown otherwise waits 2 x 5 s for idle pools
            .setConfig(BoltConnectorInternalSettings.thread_pool_shutdown_wait_time, Duration.ofMillis(200))
            .setConfig(BoltConnectorInternalSettings.connection_shutdown_wait_time, Duration.ofMillis(200))
            .build();
        Runtime.getRuntime().addShutdownHook(new Thread(dbms::shutdown, "neo4j-shutdown"));
        var system = dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME);
        // a new store: the initial password "neo4j" must be changed; a restart keeps the one set before
        boolean fresh = system.executeTransactionally(
            "SHOW USERS YIELD user, passwordChangeRequired WHERE user = 'neo4j' RETURN passwordChangeRequired",
            Map.of(), r -> r.hasNext() && Boolean.TRUE.equals(r.next().get("passwordChangeRequired")));
        if (fresh) {
            system.executeTransactionally("ALTER USER neo4j SET PASSWORD $p CHANGE NOT REQUIRED", Map.of("p", password));
        }
        // the default database is up once this answers
        dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).executeTransactionally("RETURN 1");
        System.out.println("READY bolt=127.0.0.1:" + port);
        System.out.flush();
    }
}
