package beam_zdl.testing;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.List;
import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

/**
 * Stands in for Apicurio's config-index Quarkus extension, whose deployment artifact Maven
 * Central does not serve: an empty list of runtime-editable properties, so every setting
 * comes from static configuration (system properties, application.properties).
 */
@ApplicationScoped
public class DynamicPropertiesIndex {
    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicConfigPropertyList() {
        return new DynamicConfigPropertyList(List.of());
    }
}
