package pgfanout.testkit.apicurio.deployment;

import java.util.ArrayList;
import java.util.List;

import org.eclipse.microprofile.config.inject.ConfigProperty;
import org.jboss.jandex.AnnotationInstance;
import org.jboss.jandex.AnnotationValue;
import org.jboss.jandex.DotName;
import org.jboss.jandex.Type;

import io.apicurio.common.apps.config.Dynamic;
import io.apicurio.common.apps.config.DynamicConfigPropertyDef;
import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import io.quarkus.arc.deployment.BeanDiscoveryFinishedBuildItem;
import io.quarkus.arc.deployment.SyntheticBeanBuildItem;
import io.quarkus.arc.processor.InjectionPointInfo;
import io.quarkus.deployment.annotations.BuildProducer;
import io.quarkus.deployment.annotations.BuildStep;
import io.quarkus.deployment.annotations.ExecutionTime;
import io.quarkus.deployment.annotations.Record;
import pgfanout.testkit.apicurio.DynamicPropertiesInfoRecorder;

/**
 * The build step Apicurio Registry 2.4's "config index" extension runs (its
 * deployment half is not on Maven Central): every injected field that is a
 * {@code @ConfigProperty} marked {@code @Dynamic} (a {@code Supplier<T>})
 * becomes a {@link DynamicConfigPropertyDef}, and the list of them the bean
 * the registry's runtime looks up.
 */
final class DynamicPropertiesStep {
    private static final DotName CONFIG_PROPERTY = DotName.createSimple(ConfigProperty.class.getName());
    private static final DotName DYNAMIC = DotName.createSimple(Dynamic.class.getName());

    @BuildStep
    @Record(ExecutionTime.RUNTIME_INIT)
    void publish(DynamicPropertiesInfoRecorder recorder, BeanDiscoveryFinishedBuildItem discovered,
            BuildProducer<SyntheticBeanBuildItem> beans) {
        List<DynamicConfigPropertyDef> found = new ArrayList<>();
        for (InjectionPointInfo point : discovered.getInjectionPoints()) {
            if (!point.isField()) {
                continue;
            }
            AnnotationInstance property = point.getRequiredQualifier(CONFIG_PROPERTY);
            AnnotationInstance dynamic = point.getTarget().asField().annotation(DYNAMIC);
            if (property != null && dynamic != null) {
                found.add(definition(point, property, dynamic));
            }
        }
        beans.produce(SyntheticBeanBuildItem.configure(DynamicConfigPropertyList.class)
                .runtimeValue(recorder.propertyList(found))
                .unremovable()
                .setRuntimeInit()
                .done());
    }

    private static DynamicConfigPropertyDef definition(InjectionPointInfo point, AnnotationInstance property,
            AnnotationInstance dynamic) {
        String name = property.value("name").asString();
        AnnotationValue fallback = property.value("defaultValue");
        if (fallback == null) {
            throw new IllegalStateException("dynamic config property " + name + " has no defaultValue");
        }
        // Supplier<T>: the property's type is T.
        Type valueType = point.getRequiredType().asParameterizedType().arguments().get(0);
        Class<?> type;
        try {
            type = Class.forName(valueType.name().toString());
        } catch (ClassNotFoundException e) {
            throw new IllegalStateException("dynamic config property " + name + ": unknown type " + valueType, e);
        }
        DynamicConfigPropertyDef def = new DynamicConfigPropertyDef(name, type, fallback.asString());
        AnnotationValue label = dynamic.value("label");
        if (label != null) {
            def.setLabel(label.asString());
        }
        AnnotationValue description = dynamic.value("description");
        if (description != null) {
            def.setDescription(description.asString());
        }
        AnnotationValue requires = dynamic.value("requires");
        if (requires != null) {
            def.setRequires(requires.asStringArray());
        }
        return def;
    }
}
