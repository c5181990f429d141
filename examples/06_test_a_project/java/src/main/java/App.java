// A small web app: GET / answers {"status":"ok"}, GET /add?a=1&b=2 answers {"sum":3}.
// Test mode starts it with PORT set to the `app.port` of the request (`java App.java`
// runs it straight from source).
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;

public class App {
    static void send(HttpExchange ex, int status, String json) throws IOException {
        byte[] body = json.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(status, body.length);
        ex.getResponseBody().write(body);
        ex.close();
        System.out.println(ex.getRequestMethod() + " " + ex.getRequestURI() + " -> " + status);
    }

    static String param(String query, String name) {
        if (query == null) return null;
        for (String pair : query.split("&")) {
            String[] kv = pair.split("=", 2);
            if (kv.length == 2 && kv[0].equals(name)) return kv[1];
        }
        return null;
    }

    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 0);
        server.createContext("/", ex -> {
            String path = ex.getRequestURI().getPath();
            if (path.equals("/")) {
                send(ex, 200, "{\"status\":\"ok\"}");
            } else if (path.equals("/add")) {
                String query = ex.getRequestURI().getQuery();
                try {
                    int sum = Integer.parseInt(param(query, "a")) + Integer.parseInt(param(query, "b"));
                    send(ex, 200, "{\"sum\":" + sum + "}");
                } catch (NumberFormatException e) {
                    send(ex, 400, "{\"error\":\"a and b must be integers\"}");
                }
            } else {
                send(ex, 404, "{\"error\":\"not found\"}");
            }
        });
        server.start();
        System.out.println("listening on port " + port);
    }
}
