package dev.warren.it.support;

import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;
import java.util.List;
import java.util.Map;

/** The RabbitMQ-compatible management HTTP API (Warren's, or the reference broker's). */
public final class Mgmt {
    private final String base;
    private final String auth;
    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();

    public Mgmt(String base, String user, String password) {
        this.base = base.endsWith("/") ? base.substring(0, base.length() - 1) : base;
        this.auth = "Basic " + Base64.getEncoder().encodeToString((user + ":" + password).getBytes(StandardCharsets.UTF_8));
    }

    /** One path segment, percent-encoded (spaces as %20, "/" as %2F). */
    public static String seg(String s) {
        return URLEncoder.encode(s, StandardCharsets.UTF_8).replace("+", "%20");
    }

    public HttpResponse<String> request(String method, String path, Map<String, String> headers) {
        HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(base + path))
                .timeout(Duration.ofSeconds(30))
                .header("Authorization", auth)
                .method(method, HttpRequest.BodyPublishers.noBody());
        headers.forEach(b::header);
        try {
            return http.send(b.build(), HttpResponse.BodyHandlers.ofString());
        } catch (IOException e) {
            throw new RuntimeException(method + " " + path + ": " + e, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new RuntimeException(e);
        }
    }

    /** GET a JSON document; null on 404. */
    public Object get(String path) {
        HttpResponse<String> r = request("GET", path, Map.of());
        if (r.statusCode() == 404) {
            return null;
        }
        if (r.statusCode() != 200) {
            throw new IllegalStateException("GET " + path + " -> " + r.statusCode() + ": " + r.body());
        }
        return Json.parse(r.body());
    }

    public int delete(String path, Map<String, String> headers) {
        return request("DELETE", path, headers).statusCode();
    }

    /** The server-side name of the connection whose client-provided name is {@code clientName}, or null. */
    public String connectionNamed(String clientName) {
        List<Object> conns = Json.arr(get("/api/connections"));
        for (Object o : conns) {
            Map<String, Object> c = Json.obj(o);
            Object props = c.get("client_properties");
            if (props instanceof Map && clientName.equals(Json.obj(props).get("connection_name"))) {
                return (String) c.get("name");
            }
        }
        return null;
    }

    /** GET /api/queues/{vhost}/{name}; null if there is none. */
    public Map<String, Object> queue(String vhost, String name) {
        Object q = get("/api/queues/" + seg(vhost) + "/" + seg(name));
        return q == null ? null : Json.obj(q);
    }
}
