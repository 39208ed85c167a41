package pgfanout.testkit.apicurio;

import java.util.List;

import io.apicurio.common.apps.config.DynamicConfigPropertyDef;
import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import io.quarkus.runtime.RuntimeValue;
import io.quarkus.runtime.annotations.Recorder;

/** Makes, at start-up, the bean that {@code DynamicPropertiesStep} describes at build time. */
@Recorder
public class DynamicPropertiesInfoRecorder {
    public RuntimeValue<DynamicConfigPropertyList> propertyList(List<DynamicConfigPropertyDef> properties) {
        return new RuntimeValue<>(new DynamicConfigPropertyList(properties));
    }
}
