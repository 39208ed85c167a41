package pgfanout.testkit;

import java.io.IOException;
import java.util.Arrays;

/**
 * Runs another class's {@code main} under a watchdog: when standard input
 * reaches end-of-file (the test process that holds the pipe closed it, or
 * died), the JVM exits through its shutdown hooks, and is halted 20 s later
 * if they hang. So no server outlives the test process that started it.
 *
 * <p>With {@code -Dpgfanout.deleteOnEof=<dir>} the JVM instead deletes that
 * directory and halts at once on end-of-file: the owner is gone, and so is
 * any use of the data (a SIGTERM still stops the server gracefully and keeps
 * its directory, for restart tests).
 *
 * <p>Usage: {@code java -cp ... pgfanout.testkit.Launch <main class> [args...]}.
 * With {@code -Dpgfanout.watchStdin=false} the watchdog is off.
 */
public final class Launch {
    private Launch() {}

    public static void main(String[] args) throws Throwable {
        if (args.length == 0) {
            System.err.println("usage: Launch <main class> [args...]");
            System.exit(2);
        }
        watchStdin();
        Class<?> main = Class.forName(args[0]);
        String[] rest = Arrays.copyOfRange(args, 1, args.length);
        try {
            main.getMethod("main", String[].class).invoke(null, (Object) rest);
        } catch (java.lang.reflect.InvocationTargetException e) {
            throw e.getCause();
        }
    }

    /** Exits the JVM when stdin reaches EOF (unless disabled). */
    public static void watchStdin() {
        if (!Boolean.parseBoolean(System.getProperty("pgfanout.watchStdin", "true"))) {
            return;
        }
        Thread t = new Thread(() -> {
            try {
                byte[] buf = new byte[256];
                while (System.in.read(buf) != -1) {
                    // ignore input
                }
            } catch (IOException e) {
                // treat as EOF
            }
            String delete = System.getProperty("pgfanout.deleteOnEof", "");
            if (!delete.isEmpty()) {
                System.err.println("pgfanout launcher: stdin closed, deleting " + delete + " and halting");
                deleteTree(new java.io.File(delete));
                Runtime.getRuntime().halt(0);
            }
            System.err.println("pgfanout launcher: stdin closed, shutting down");
            Thread halter = new Thread(() -> {
                try {
                    Thread.sleep(20_000);
                } catch (InterruptedException e) {
                    // fall through
                }
                System.err.println("pgfanout launcher: shutdown hooks hung, halting");
                Runtime.getRuntime().halt(1);
            }, "pgfanout-halter");
            halter.setDaemon(true);
            halter.start();
            System.exit(0);
        }, "pgfanout-stdin-watchdog");
        t.setDaemon(true);
        t.start();
    }

    private static void deleteTree(java.io.File f) {
        java.io.File[] children = f.listFiles();
        if (children != null && !java.nio.file.Files.isSymbolicLink(f.toPath())) {
            for (java.io.File c : children) {
                deleteTree(c);
            }
        }
        f.delete();
    }
}
