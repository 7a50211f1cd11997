import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
    alias(libs.plugins.kotlin.compose)
}

android {
    namespace = "org.spnas.demo"
    compileSdk = 36

    defaultConfig {
        applicationId = "org.spnas.demo"
        // LiteRT 2.3.0's AARs declare minSdk 24 (Android 7.0).
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
        ndk {
            // Phones are arm64; x86_64 is for the emulator (instrumented tests, not latency).
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            // Signed with the debug key so `./gradlew installRelease` works for benchmarking
            // (release builds are not debuggable, which matters for timing).
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    buildFeatures {
        compose = true
        buildConfig = true
    }

    // The model is memory-mapped from the APK; the golden files are read as raw bytes.
    androidResources {
        noCompress += listOf("tflite", "bin", "rgb")
    }

    packaging {
        resources { excludes += "/META-INF/{AL2.0,LGPL2.1}" }
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

// Assets are written by `python -m spnas.cli.android` (or `spnas-export --android-assets`), never by hand.
val spnasAssets = layout.projectDirectory.dir("src/main/assets")
val requiredAssets = listOf(
    "model.tflite", "labels.txt", "preprocessing.json",
    "golden/golden.json", "golden/sample.png", "golden/crop.rgb", "golden/input.bin",
).map { spnasAssets.file(it).asFile }

val checkSpnasAssets by tasks.registering {
    description = "Fails early, with the command to run, when the synced spnas assets are missing."
    val files = requiredAssets
    doLast {
        val missing = files.filterNot { it.isFile }
        if (missing.isNotEmpty()) {
            throw GradleException(
                "missing spnas assets: ${missing.joinToString { it.name }}. From the repository root run:\n" +
                    "  python -m spnas.cli.android --tflite exports/spnasnet_100_int8.tflite " +
                    "--out android_demo/app/src/main/assets",
            )
        }
    }
}

tasks.named("preBuild") { dependsOn(checkSpnasAssets) }

tasks.withType<Test>().configureEach {
    systemProperty("spnas.assets", spnasAssets.asFile.absolutePath)
    // The report `spnas-bench --import` is tested on (BenchmarkReportTest checks this code writes it).
    systemProperty("spnas.benchExample", rootProject.file("../tests/data/android_app/spnas-bench-android.json").absolutePath)
}

dependencies {
    implementation(libs.litert)
    implementation(libs.litert.gpu)
    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.activity.compose)
    implementation(libs.androidx.lifecycle.runtime.ktx)
    implementation(libs.androidx.lifecycle.runtime.compose)
    implementation(libs.androidx.lifecycle.viewmodel.compose)
    implementation(platform(libs.androidx.compose.bom))
    implementation(libs.androidx.compose.ui)
    implementation(libs.androidx.compose.ui.graphics)
    implementation(libs.androidx.compose.ui.tooling.preview)
    implementation(libs.androidx.compose.material3)
    implementation(libs.kotlinx.coroutines.android)
    debugImplementation(libs.androidx.compose.ui.tooling)

    testImplementation(libs.junit)

    androidTestImplementation(libs.androidx.junit)
    androidTestImplementation(libs.androidx.test.runner)
}
