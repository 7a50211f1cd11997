package org.spnas.demo.core

/**
 * A small JSON reader and writer, so the Android-independent code needs no library and runs
 * unchanged in JVM unit tests (Android's own org.json is a stub there).
 *
 * Values map to Kotlin as: object -> Map<String, Any?> (insertion ordered), array -> List<Any?>,
 * string -> String, number -> Double, true/false -> Boolean, null -> null.
 */
object Json {
    fun parse(text: String): Any? {
        val reader = Reader(text)
        val value = reader.value()
        reader.skipWhitespace()
        if (!reader.atEnd()) throw reader.error("unexpected trailing text")
        return value
    }

    fun write(value: Any?): String = StringBuilder().also { append(it, value) }.toString()

    private fun append(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is String -> appendString(out, value)
            is Boolean -> out.append(value)
            is Int, is Long -> out.append(value)
            is Number -> {
                val number = value.toDouble()
                require(!number.isNaN() && !number.isInfinite()) { "JSON cannot hold $number" }
                out.append(number)
            }
            is Map<*, *> -> {
                out.append('{')
                var first = true
                for ((key, item) in value) {
                    if (!first) out.append(',')
                    first = false
                    appendString(out, key.toString())
                    out.append(':')
                    append(out, item)
                }
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                var first = true
                for (item in value) {
                    if (!first) out.append(',')
                    first = false
                    append(out, item)
                }
                out.append(']')
            }
            is DoubleArray -> append(out, value.toList())
            is FloatArray -> append(out, value.map { it.toDouble() })
            is IntArray -> append(out, value.toList())
            else -> throw IllegalArgumentException("cannot write ${value.javaClass.name} as JSON")
        }
    }

    private fun appendString(out: StringBuilder, text: String) {
        out.append('"')
        for (c in text) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c < ' ' -> out.append("\\u").append(String.format("%04x", c - '\u0000'))
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    private class Reader(private val text: String) {
        private var position = 0

        fun atEnd() = position >= text.length

        fun error(message: String) = IllegalArgumentException("JSON: $message at offset $position")

        fun skipWhitespace() {
            while (!atEnd() && text[position] in " \t\r\n") position++
        }

        fun value(): Any? {
            skipWhitespace()
            if (atEnd()) throw error("unexpected end")
            return when (text[position]) {
                '{' -> obj()
                '[' -> array()
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> number()
            }
        }

        private fun literal(word: String, result: Any?): Any? {
            if (!text.startsWith(word, position)) throw error("unexpected character")
            position += word.length
            return result
        }

        private fun expect(c: Char) {
            skipWhitespace()
            if (atEnd() || text[position] != c) throw error("expected '$c'")
            position++
        }

        private fun obj(): Map<String, Any?> {
            expect('{')
            val result = LinkedHashMap<String, Any?>()
            skipWhitespace()
            if (!atEnd() && text[position] == '}') {
                position++
                return result
            }
            while (true) {
                skipWhitespace()
                val key = string()
                expect(':')
                result[key] = value()
                skipWhitespace()
                if (atEnd()) throw error("unterminated object")
                if (text[position++] == '}') return result
                if (text[position - 1] != ',') throw error("expected ',' or '}'")
            }
        }

        private fun array(): List<Any?> {
            expect('[')
            val result = ArrayList<Any?>()
            skipWhitespace()
            if (!atEnd() && text[position] == ']') {
                position++
                return result
            }
            while (true) {
                result.add(value())
                skipWhitespace()
                if (atEnd()) throw error("unterminated array")
                if (text[position++] == ']') return result
                if (text[position - 1] != ',') throw error("expected ',' or ']'")
            }
        }

        private fun string(): String {
            if (atEnd() || text[position] != '"') throw error("expected a string")
            position++
            val out = StringBuilder()
            while (true) {
                if (atEnd()) throw error("unterminated string")
                val c = text[position++]
                when (c) {
                    '"' -> return out.toString()
                    '\\' -> {
                        if (atEnd()) throw error("unterminated escape")
                        when (val escaped = text[position++]) {
                            'n' -> out.append('\n')
                            't' -> out.append('\t')
                            'r' -> out.append('\r')
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000c')
                            'u' -> {
                                if (position + 4 > text.length) throw error("short \\u escape")
                                out.append(Integer.parseInt(text.substring(position, position + 4), 16).toChar())
                                position += 4
                            }
                            else -> out.append(escaped)
                        }
                    }
                    else -> out.append(c)
                }
            }
        }

        private fun number(): Double {
            val start = position
            while (!atEnd() && text[position] in "+-0123456789.eE") position++
            if (start == position) throw error("unexpected character '${text[position]}'")
            return text.substring(start, position).toDoubleOrNull() ?: throw error("bad number")
        }
    }
}

/** Typed access to a parsed JSON object, with errors that name the missing or mistyped field. */
class JsonObject(val map: Map<String, Any?>, private val path: String = "") {
    private fun field(key: String): Any? =
        if (map.containsKey(key)) map[key] else throw IllegalArgumentException("missing field '$path$key'")

    fun has(key: String) = map.containsKey(key)

    fun string(key: String): String = field(key) as? String ?: throw typeError(key, "a string")

    fun double(key: String): Double = (field(key) as? Number)?.toDouble() ?: throw typeError(key, "a number")

    fun int(key: String): Int {
        val value = double(key)
        if (value != Math.rint(value)) throw typeError(key, "an integer")
        return value.toInt()
    }

    fun obj(key: String): JsonObject {
        @Suppress("UNCHECKED_CAST")
        val value = field(key) as? Map<String, Any?> ?: throw typeError(key, "an object")
        return JsonObject(value, "$path$key.")
    }

    fun list(key: String): List<Any?> = field(key) as? List<Any?> ?: throw typeError(key, "an array")

    fun doubles(key: String): DoubleArray =
        list(key).map { (it as? Number)?.toDouble() ?: throw typeError(key, "an array of numbers") }.toDoubleArray()

    fun ints(key: String): IntArray = doubles(key).map { it.toInt() }.toIntArray()

    fun objects(key: String): List<JsonObject> = list(key).mapIndexed { i, item ->
        @Suppress("UNCHECKED_CAST")
        JsonObject(item as? Map<String, Any?> ?: throw typeError(key, "an array of objects"), "$path$key[$i].")
    }

    private fun typeError(key: String, what: String) = IllegalArgumentException("field '$path$key' is not $what")

    companion object {
        fun parse(text: String): JsonObject {
            @Suppress("UNCHECKED_CAST")
            val map = Json.parse(text) as? Map<String, Any?> ?: throw IllegalArgumentException("JSON: not an object")
            return JsonObject(map)
        }
    }
}
