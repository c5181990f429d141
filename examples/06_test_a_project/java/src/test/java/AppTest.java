// The app's tests (JUnit 5): they reach the running app at APP_URL (test mode sets it).
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import org.junit.jupiter.api.Test;

class AppTest {
    static final String URL = System.getenv().getOrDefault("APP_URL", "http://127.0.0.1:8080");
    static final HttpClient CLIENT = HttpClient.newHttpClient();

    static HttpResponse<String> get(String path) throws Exception {
        HttpRequest request = HttpRequest.newBuilder(URI.create(URL + path)).build();
        return CLIENT.send(request, HttpResponse.BodyHandlers.ofString());
    }

    @Test
    void health() throws Exception {
        HttpResponse<String> res = get("/");
        assertEquals(200, res.statusCode());
        assertEquals("{\"status\":\"ok\"}", res.body());
    }

    @Test
    void add() throws Exception {
        assertEquals("{\"sum\":5}", get("/add?a=2&b=3").body());
    }

    @Test
    void addRefusesWords() throws Exception {
        assertEquals(400, get("/add?a=two&b=3").statusCode());
    }
}
