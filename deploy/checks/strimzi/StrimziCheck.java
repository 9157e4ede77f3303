// Checks Strimzi custom resources (Kafka, KafkaNodePool, KafkaTopic, KafkaUser) against Strimzi's own
// published model (io.strimzi:api): each document is read into its model class, as the
// operator reads it; a wrong type or value fails, and a field the model does not know (which
// the operator would only warn about and ignore) fails too. Other kinds are skipped.
//
//   mvn -q -f deploy/checks/strimzi/pom.xml dependency:build-classpath -Dmdep.outputFile=cp.txt
//   java -cp "$(cat cp.txt)" deploy/checks/strimzi/StrimziCheck.java FILE.yaml...
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.dataformat.yaml.YAMLFactory;
import com.fasterxml.jackson.dataformat.yaml.YAMLParser;
import io.strimzi.api.kafka.model.common.UnknownPropertyPreserving;
import io.strimzi.api.kafka.model.kafka.Kafka;
import io.strimzi.api.kafka.model.nodepool.KafkaNodePool;
import io.strimzi.api.kafka.model.topic.KafkaTopic;
import io.strimzi.api.kafka.model.user.KafkaUser;
import java.io.File;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.util.ArrayList;
import java.util.Collection;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;

public class StrimziCheck {
    static final Map<String, Class<?>> KINDS = Map.of(
            "Kafka", Kafka.class, "KafkaNodePool", KafkaNodePool.class, "KafkaTopic", KafkaTopic.class,
            "KafkaUser", KafkaUser.class);

    public static void main(String[] args) throws Exception {
        ObjectMapper yaml = new ObjectMapper(new YAMLFactory())
                .enable(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES)
                .enable(DeserializationFeature.FAIL_ON_NUMBERS_FOR_ENUMS);
        int checked = 0;
        List<String> faults = new ArrayList<>();
        for (String path : args) {
            YAMLParser parser = new YAMLFactory().createParser(new File(path));
            for (JsonNode doc : yaml.readValues(parser, JsonNode.class).readAll()) {
                if (doc == null || !doc.has("kind")) continue;
                Class<?> type = KINDS.get(doc.get("kind").asText());
                if (type == null || !doc.path("apiVersion").asText().startsWith("kafka.strimzi.io/")) continue;
                String name = path + ": " + doc.get("kind").asText() + "/" + doc.path("metadata").path("name").asText();
                try {
                    Object resource = yaml.treeToValue(doc, type);
                    unknown(resource, "", faults, name, new IdentityHashMap<>());
                    checked++;
                } catch (Exception e) {
                    faults.add(name + ": " + e.getMessage().split("\n")[0]);
                }
            }
        }
        for (String fault : faults) System.err.println("FAIL " + fault);
        System.out.println(checked + " Strimzi resources checked against io.strimzi:api, " + faults.size() + " faults");
        System.exit(faults.isEmpty() && checked > 0 ? 0 : 1);
    }

    /** Fields the model did not know, kept aside by Strimzi's UnknownPropertyPreserving classes. */
    static void unknown(Object o, String at, List<String> faults, String name, IdentityHashMap<Object, Boolean> seen)
            throws Exception {
        if (o == null || seen.containsKey(o)) return;
        seen.put(o, true);
        if (o instanceof Collection<?> c) {
            int i = 0;
            for (Object item : c) unknown(item, at + "[" + i++ + "]", faults, name, seen);
            return;
        }
        if (o instanceof Map<?, ?> || !o.getClass().getName().startsWith("io.strimzi.")) return;
        if (o instanceof UnknownPropertyPreserving u && u.getAdditionalProperties() != null
                && !u.getAdditionalProperties().isEmpty()) {
            faults.add(name + ": unknown field(s) " + u.getAdditionalProperties().keySet() + " at " + (at.isEmpty() ? "/" : at));
        }
        for (Method m : o.getClass().getMethods()) {
            if (m.getParameterCount() == 0 && m.getName().startsWith("get") && !Modifier.isStatic(m.getModifiers())
                    && !m.getName().equals("getAdditionalProperties") && !m.getName().equals("getClass")) {
                unknown(m.invoke(o), at + "/" + m.getName().substring(3), faults, name, seen);
            }
        }
    }
}
