package org.spnas.demo.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class JsonTest {
    @Test fun parsesNestedValues() {
        val parsed = JsonObject.parse("""{"a": [1, 2.5e1, -3], "b": {"c": "x\"\u00e9\n"}, "d": true, "e": null}""")
        assertEquals(listOf(1.0, 25.0, -3.0), parsed.list("a"))
        assertEquals("x\"\u00e9\n", parsed.obj("b").string("c"))
        assertEquals(true, parsed.map["d"])
        assertTrue(parsed.has("e"))
    }

    @Test fun writesWhatItReads() {
        val value = linkedMapOf("name" to "tab\there", "runs" to 3, "ms" to listOf(1.5, 2.0), "none" to null)
        assertEquals(value.toString(), (Json.parse(Json.write(value)) as Map<*, *>).let {
            linkedMapOf("name" to it["name"], "runs" to (it["runs"] as Double).toInt(), "ms" to it["ms"],
                "none" to it["none"]).toString()
        })
    }

    @Test fun namesTheMissingField() {
        try {
            JsonObject.parse("""{"model": {}}""").obj("model").string("file")
            fail("expected an error")
        } catch (e: IllegalArgumentException) {
            assertEquals("missing field 'model.file'", e.message)
        }
    }

    @Test fun rejectsTrailingText() {
        try {
            Json.parse("{} x")
            fail("expected an error")
        } catch (e: IllegalArgumentException) {
            assertTrue(e.message!!.contains("trailing"))
        }
    }
}
