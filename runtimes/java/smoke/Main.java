// Petri smoke test: prove single-file source launch works and both output streams work.
public class Main {
    public static void main(String[] args) {
        System.out.println("petri smoke ok: java " + System.getProperty("java.version"));
        System.err.println("petri smoke: stderr works");
    }
}
